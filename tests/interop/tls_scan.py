"""Scans a TLS listener with sslyze and prints a JSON summary of what it found.

Usage: tls_scan.py --port P [--cert F --key F]

Without a client certificate only the connectivity probe runs (sslyze then reports
whether the server requires one); with it, every protocol version, cipher suite,
renegotiation, compression and the classic vulnerabilities are scanned, and one
handshake with Python's `ssl` (OpenSSL, its default suite order) reports which TLS 1.3
suite the server chose.
"""

import argparse
import json
import socket
import ssl
from pathlib import Path

from sslyze import (
    ClientAuthenticationCredentials,
    Scanner,
    ScanCommand,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)

VERSIONS = {
    "SSL 2.0": ScanCommand.SSL_2_0_CIPHER_SUITES,
    "SSL 3.0": ScanCommand.SSL_3_0_CIPHER_SUITES,
    "TLS 1.0": ScanCommand.TLS_1_0_CIPHER_SUITES,
    "TLS 1.1": ScanCommand.TLS_1_1_CIPHER_SUITES,
    "TLS 1.2": ScanCommand.TLS_1_2_CIPHER_SUITES,
    "TLS 1.3": ScanCommand.TLS_1_3_CIPHER_SUITES,
}
CHECKS = {
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.HEARTBLEED,
    ScanCommand.OPENSSL_CCS_INJECTION,
    ScanCommand.ROBOT,
    ScanCommand.TLS_FALLBACK_SCSV,
    ScanCommand.TLS_1_3_EARLY_DATA,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()
    creds = None
    if a.cert:
        creds = ClientAuthenticationCredentials(
            certificate_chain_path=Path(a.cert), key_path=Path(a.key)
        )
    request = ServerScanRequest(
        server_location=ServerNetworkLocation("localhost", a.port, ip_address="127.0.0.1"),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication="localhost", tls_client_auth_credentials=creds
        ),
        scan_commands=(set(VERSIONS.values()) | CHECKS) if creds else set(),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    out = {}
    for result in scanner.get_results():
        if result.scan_status != ServerScanStatusEnum.COMPLETED:
            out["error"] = str(result.connectivity_error_trace or result.scan_status)
            continue
        out["client_auth"] = result.connectivity_result.client_auth_requirement.name
        out["highest_version"] = result.connectivity_result.highest_tls_version_supported.name
        if not creds:
            continue
        scan = result.scan_result
        out["suites"] = {}
        for name, command in VERSIONS.items():
            attempt = getattr(scan, command.value)
            if attempt.result is None:
                out["suites"][name] = f"error: {attempt.error_reason}"
                continue
            out["suites"][name] = [s.cipher_suite.name for s in attempt.result.accepted_cipher_suites]
        reneg = scan.session_renegotiation.result
        out["secure_renegotiation"] = reneg.supports_secure_renegotiation if reneg else "error"
        out["client_renegotiation_dos"] = (
            reneg.is_vulnerable_to_client_renegotiation_dos if reneg else "error"
        )
        comp = scan.tls_compression.result
        out["compression"] = comp.supports_compression if comp else "error"
        hb = scan.heartbleed.result
        out["heartbleed"] = hb.is_vulnerable_to_heartbleed if hb else "error"
        ccs = scan.openssl_ccs_injection.result
        out["ccs_injection"] = ccs.is_vulnerable_to_ccs_injection if ccs else "error"
        robot = scan.robot.result
        out["robot"] = robot.robot_result.name if robot else "error"
        scsv = scan.tls_fallback_scsv.result
        out["fallback_scsv"] = scsv.supports_fallback_scsv if scsv else "error"
        early = scan.tls_1_3_early_data.result
        out["early_data"] = early.supports_early_data if early else "error"
    if creds:
        out["openssl_choice"] = openssl_choice(a)
    print(json.dumps(out), flush=True)


def openssl_choice(a):
    """OpenSSL's first TLS 1.3 preference, and the suite the server picked from its offer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(a.cert, a.key)
    first = next(c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3")
    try:
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                return {"client_first": first, "negotiated": tls.cipher()[0]}
    except OSError as e:
        return {"client_first": first, "error": str(e)}


if __name__ == "__main__":
    main()
