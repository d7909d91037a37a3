// Node's `http` module as an app behind the sidecar (HTTP/1.1 only).
// Binds 127.0.0.1 on an ephemeral port, prints `LISTENING <port>`, serves until killed.
'use strict';
const http = require('http');
const crypto = require('crypto');

// n deterministic bytes (i % 251), the same pattern as apps.py.
function* pattern(n) {
  const block = Buffer.alloc(251 * 261);
  for (let i = 0; i < block.length; i++) block[i] = i % 251;
  for (let sent = 0; sent < n;) {
    const piece = block.subarray(0, Math.min(block.length, n - sent));
    sent += piece.length;
    yield piece;
  }
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://app');
  if (req.method === 'POST') {
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    req.on('data', (c) => { hash.update(c); bytes += c.length; });
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ sha256: hash.digest('hex'), bytes }));
    });
    return;
  }
  if (url.pathname === '/hello') {
    res.setHeader('content-type', 'text/plain');
    res.end('hello from node http\n');
  } else if (url.pathname === '/headers') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(req.headers));
  } else if (url.pathname === '/bytes') {
    const n = Number(url.searchParams.get('n') || 0);
    res.setHeader('content-type', 'application/octet-stream');
    res.setHeader('content-length', String(n));
    const gen = pattern(n);
    const pump = () => {
      for (let r = gen.next(); !r.done; r = gen.next()) {
        if (!res.write(r.value)) { res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
  } else {
    res.statusCode = 404;
    res.end('no such path\n');
  }
});
server.listen(0, '127.0.0.1', () => {
  console.log(`LISTENING ${server.address().port}`);
});
