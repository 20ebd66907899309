"""A throwaway CA and server certificates for TLS tests, made with the ``openssl`` CLI.

``make_certificates(directory)`` writes a CA and server certificates for ``127.0.0.1`` and
``localhost``: one the CA signed (valid), one self-signed, one for another host name, one not
yet valid and one expired (``openssl ca -startdate/-enddate``: explicit dates work with
OpenSSL 3.0, unlike ``x509 -not_before``). All share one EC P-256 key (fast to make).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_SAN_LOCAL = "subjectAltName=IP:127.0.0.1,DNS:localhost"
_SAN_OTHER = "subjectAltName=DNS:wrong.example"

_CA_CONFIG = """\
[ ca ]
default_ca = testca

[ testca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none

[ anything ]
commonName = supplied

[ server ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = serverAuth
"""


@dataclass(frozen=True)
class ServerCertificate:
    """A certificate chain file and its key, for ``dgd fake-server --tls-cert/--tls-key``."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Certificates:
    """What ``make_certificates`` wrote."""

    ca: Path  # the CA's certificate: a deepgram.ca_file
    valid: ServerCertificate  # signed by the CA, for 127.0.0.1 and localhost
    self_signed: ServerCertificate
    wrong_host: ServerCertificate  # signed by the CA, for wrong.example only
    not_yet_valid: ServerCertificate  # signed by the CA, valid from 2090
    expired: ServerCertificate  # signed by the CA, valid 2001-2002


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(
    directory: Path, name: str, key: Path, san: str, start: str | None, end: str | None
) -> ServerCertificate:
    csr = directory / f"{name}.csr"
    _openssl(
        "req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr), cwd=directory
    )
    ext = directory / f"{name}.ext"
    ext.write_text(
        "[ server ]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n"
        # Python >= 3.13 verifies with VERIFY_X509_STRICT: key identifiers are required.
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n"
        + san.replace("subjectAltName=", "subjectAltName = ")
        + "\n",
        encoding="ascii",
    )
    dates = ["-startdate", start, "-enddate", end] if start and end else ["-days", "30"]
    cert = directory / f"{name}.pem"
    _openssl(
        "ca", "-batch", "-notext", "-config", str(directory / "ca.cnf"),
        "-extfile", str(ext), "-extensions", "server",
        *dates, "-in", str(csr), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    return ServerCertificate(cert, key)


def make_certificates(directory: Path) -> Certificates:
    """Write a CA and the server certificates into ``directory`` (a fresh tmp dir)."""
    (directory / "issued").mkdir(parents=True)
    (directory / "index.txt").write_text("", encoding="ascii")
    (directory / "serial").write_text("1000\n", encoding="ascii")
    (directory / "ca.cnf").write_text(_CA_CONFIG.format(dir=directory), encoding="ascii")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
        "-subj", "/CN=dgd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    key = directory / "server.key"
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(key),
        cwd=directory,
    )  # fmt: skip
    self_signed = directory / "self-signed.pem"
    _openssl(
        "req", "-x509", "-key", str(key), "-out", str(self_signed), "-days", "30",
        "-subj", "/CN=self-signed", "-addext", _SAN_LOCAL,
        cwd=directory,
    )  # fmt: skip
    return Certificates(
        ca=directory / "ca.pem",
        valid=_signed(directory, "valid", key, _SAN_LOCAL, None, None),
        self_signed=ServerCertificate(self_signed, key),
        wrong_host=_signed(directory, "wrong-host", key, _SAN_OTHER, None, None),
        not_yet_valid=_signed(
            directory, "not-yet-valid", key, _SAN_LOCAL, "20900101000000Z", "20910101000000Z"
        ),
        expired=_signed(
            directory, "expired", key, _SAN_LOCAL, "20010101000000Z", "20020101000000Z"
        ),
    )
