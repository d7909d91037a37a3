"""Certificates for the crypto.x509.parse_certificates differential test, with
OPA's answer for each.

Writes to standard output one JSON document:
  {"cases": [{"c": INPUT, "kind": "ok" | "unsupported" | "mutated", "error": BOOL, "want": VALUE}]}
where INPUT is PEM text, base64 of PEM or base64 of DER; "unsupported" marks
inputs portcullis answers with an error by design (documented in the README),
"mutated" certificates with random bytes changed, which portcullis must answer
as OPA does or with an error.
Serial numbers and public key integers (RSA moduli, curve points) are given as
decimal strings: JSON readers that go through a double (portcullis' input
reader included) cannot hold them, and the test converts its own answer the same
way with format_int.

Usage: x509_certs.py [SEED [PEM_FILE...]]. Certificates are made with `cryptography` from a seeded generator: key types
(RSA, ECDSA P-256/P-384/P-521, Ed25519), issuers, names, validity, serials and
extensions vary from one to the next.
"""
import base64
import datetime
import ipaddress
import json
import random
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, dsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from opa_bindings import OpaEngine

rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
# Further PEM files (certificates made elsewhere) to compare as they are.
EXTRA_FILES = sys.argv[2:]
UTC = datetime.timezone.utc


def key(kind):
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa3072":
        return rsa.generate_private_key(65537, 3072)
    if kind == "rsa-e3":
        return rsa.generate_private_key(3, 2048)
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "p224":
        return ec.generate_private_key(ec.SECP224R1())
    if kind == "dsa":
        return dsa.generate_private_key(2048)
    raise ValueError(kind)


KINDS = ["rsa2048", "rsa3072", "rsa-e3", "p256", "p384", "p521", "ed25519"]
ISSUERS = [key(k) for k in ["rsa2048", "p256", "p384", "ed25519"]]

ATTRS = [
    (NameOID.COUNTRY_NAME, ["US", "DE", "FR"]),
    (NameOID.ORGANIZATION_NAME, ["Acme", "Example Org", "Zed & Co"]),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, ["Platform", "Mesh"]),
    (NameOID.LOCALITY_NAME, ["Berlin", "Paris"]),
    (NameOID.STATE_OR_PROVINCE_NAME, ["Bayern", "CA"]),
    (NameOID.STREET_ADDRESS, ["1 Main St"]),
    (NameOID.POSTAL_CODE, ["10115"]),
    (NameOID.SERIAL_NUMBER, ["42", "A-7"]),
    (NameOID.EMAIL_ADDRESS, ["ops@example.org"]),
    (NameOID.COMMON_NAME, ["svc", "frontend.default", "ünïcode"]),
    (NameOID.DOMAIN_COMPONENT, ["example"]),
]


def name():
    attrs = []
    for oid, values in ATTRS:
        if rng.random() < 0.35:
            attrs.append(x509.NameAttribute(oid, rng.choice(values)))
    if rng.random() < 0.2:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, "second"))
    rng.shuffle(attrs)
    return x509.Name(attrs)


def sans():
    names = []
    if rng.random() < 0.8:
        td = rng.choice(["example.org", "cluster.local", "td-1.example"])
        names.append(x509.UniformResourceIdentifier(
            f"spiffe://{td}/ns/{rng.choice(['default', 'a'])}/sa/{rng.choice(['web', 'b-1'])}"))
    if rng.random() < 0.2:
        names.append(x509.UniformResourceIdentifier("https://api.example.org:8443/v1/x"))
    if rng.random() < 0.5:
        names.append(x509.DNSName(rng.choice(["a.example", "*.svc.cluster.local", "localhost"])))
    if rng.random() < 0.4:
        names.append(x509.IPAddress(ipaddress.ip_address(rng.choice(["10.0.0.1", "127.0.0.1", "::1", "2001:db8::5", "fe80::1:0:0:2", "::ffff:192.0.2.7"]))))
    if rng.random() < 0.2:
        names.append(x509.RFC822Name("a@b.example"))
    return names


EKUS = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.CODE_SIGNING,
        ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.TIME_STAMPING, ExtendedKeyUsageOID.OCSP_SIGNING,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE, ObjectIdentifier("1.3.6.1.4.1.99999.1")]


def extensions(b, subject_key, issuer_key, ca):
    if rng.random() < 0.85:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=rng.choice([None, 0, 3]) if ca else None),
                            critical=rng.random() < 0.7)
    if rng.random() < 0.8:
        flags = [rng.random() < 0.5 for _ in range(9)]
        flags[0] = True
        if not flags[4]:
            flags[7] = flags[8] = False
        b = b.add_extension(x509.KeyUsage(*flags), critical=True)
    if rng.random() < 0.7:
        b = b.add_extension(x509.ExtendedKeyUsage(rng.sample(EKUS, rng.randint(1, 3))), critical=False)
    names = sans()
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=rng.random() < 0.3)
    if rng.random() < 0.6:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
    if rng.random() < 0.6:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if rng.random() < 0.2:
        b = b.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier("http://ocsp.example")),
            x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier("http://ca.example/ca.der")),
        ][:rng.randint(1, 2)]), critical=False)
    if rng.random() < 0.2:
        b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://crl.example/1"), x509.DNSName("crl.example")], None, None, None)]),
            critical=False)
    if rng.random() < 0.2:
        policies = [x509.PolicyInformation(ObjectIdentifier("2.23.140.1.2.1"), None),
                    x509.PolicyInformation(ObjectIdentifier("1.3.6.1.4.1.99999.2"), ["http://cps.example"])]
        b = b.add_extension(x509.CertificatePolicies(policies[:rng.randint(1, 2)]), critical=rng.random() < 0.3)
    if ca and rng.random() < 0.5:
        permitted = [x509.DNSName(".cluster.local"), x509.UniformResourceIdentifier("example.org"),
                     x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), x509.RFC822Name("example.org"),
                     x509.IPAddress(ipaddress.ip_network("2001:db8::/32"))]
        excluded = [x509.DNSName("bad.example"), x509.IPAddress(ipaddress.ip_network("10.1.0.0/16"))]
        b = b.add_extension(x509.NameConstraints(rng.sample(permitted, rng.randint(1, 3)),
                                                 rng.choice([None, excluded])), critical=rng.random() < 0.8)
    if rng.random() < 0.15:
        b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x04\x02hi"),
                            critical=rng.random() < 0.5)
    return b


def certificate(kind, extra=None):
    subject_key = key(kind)
    issuer_key = rng.choice(ISSUERS)
    ca = extra is None and rng.random() < 0.25  # no random name constraints beside `extra`
    start = datetime.datetime(rng.choice([1999, 2020, 2025]), rng.randint(1, 12), rng.randint(1, 28),
                              rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59), tzinfo=UTC)
    end = start + datetime.timedelta(days=rng.choice([1, 90, 365 * 40]))
    b = (x509.CertificateBuilder().subject_name(name()).issuer_name(name())
         .public_key(subject_key.public_key())
         .serial_number(rng.choice([1, rng.getrandbits(64), rng.getrandbits(159)]) or 1)
         .not_valid_before(start).not_valid_after(end))
    b = extensions(b, subject_key, issuer_key, ca)
    if extra is not None:
        b = extra(b)
    algo = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else rng.choice(
        [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
    return b.sign(issuer_key, algo)


def pem(c):
    return c.public_bytes(s.Encoding.PEM).decode()


def der(c):
    return c.public_bytes(s.Encoding.DER)


def main():
    cases = []
    for i in range(60):
        c = certificate(KINDS[i % len(KINDS)])
        form = i % 4
        if form == 0:
            text = pem(c)
        elif form == 1:
            text = pem(c) + pem(certificate(rng.choice(KINDS)))
        elif form == 2:
            text = base64.b64encode(pem(c).encode()).decode()
        else:
            text = base64.b64encode(der(c) + der(certificate(rng.choice(KINDS)))).decode()
        cases.append(("ok", text))
    unsupported = [
        lambda b: b.add_extension(x509.NameConstraints([x509.RFC822Name("a@example.org")], None), critical=True),
        lambda b: b.add_extension(x509.PolicyConstraints(0, None), critical=True),
        lambda b: b.add_extension(x509.InhibitAnyPolicy(1), critical=True),
    ]
    for extra in unsupported:
        cases.append(("unsupported", pem(certificate("p256", extra))))
    cases.append(("unsupported", pem(certificate("p224"))))
    cases.append(("unsupported", pem(certificate("dsa"))))
    one = pem(certificate("p256"))
    cases += [
        ("ok", ""),
        ("ok", "junk"),
        ("ok", "-----BEGIN X-----\nAAAA\n-----END X-----\n"),
        ("ok", one.replace("MII", "MIJ", 1)),
        ("unsupported", one[:300] + one[-30:]),
        ("ok", base64.b64encode(b"\x30\x03\x02\x01\x01").decode()),
        ("ok", "leading text\n" + one),
        ("ok", one.replace("\n", "\r\n")),
        ("ok", "\n" + one),
        ("ok", one + "\n\n" + one),
        ("ok", base64.encodebytes(der(certificate("p384"))).decode()),
    ]
    # Certificates with one or two bytes changed: portcullis must give OPA's
    # answer or an error, never another value.
    for i in range(200):
        d = bytearray(der(certificate(KINDS[i % len(KINDS)])))
        for _ in range(rng.randint(1, 2)):
            j = rng.randrange(len(d))
            d[j] = rng.randrange(256) if rng.random() < 0.7 else d[j] ^ (1 << rng.randrange(8))
        cases.append(("mutated", base64.b64encode(bytes(d)).decode()))
    for path in EXTRA_FILES:
        with open(path) as f:
            cases.append(("ok", f.read()))
    engine = OpaEngine()
    engine.add_policy("p.rego", "package p\nimport rego.v1\nc := crypto.x509.parse_certificates(input.c)\n")
    out = []
    for kind, text in cases:
        try:
            want = engine.eval_document("p.c", {"c": text})
            for cert in want:
                cert["SerialNumber"] = str(cert["SerialNumber"])
                if isinstance(cert["PublicKey"], dict):
                    cert["PublicKey"] = {k: str(v) if isinstance(v, int) else v for k, v in cert["PublicKey"].items()}
            out.append({"c": text, "kind": kind, "error": False, "want": want})
        except Exception as ex:  # noqa: BLE001 - OPA's error is the expected answer
            out.append({"c": text, "kind": kind, "error": True, "want": str(ex)})
    json.dump({"cases": out}, sys.stdout)


main()
