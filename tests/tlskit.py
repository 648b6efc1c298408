"""Test certificates made with the `openssl` command: a CA of the test's own and leaves it signs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    """A leaf's chain (leaf, then its CA) and private key, as PEM files."""

    chain: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


class TestCA:
    """A self-signed CA under `folder`; `leaf` issues certificates for DNS names."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, name: str = "tako test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert = folder / "ca.pem"
        self.key = folder / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "30", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            cwd=folder,
        )  # fmt: skip
        self._serial = 0

    def leaf(self, *names: str, days: int = 10) -> Pair:
        self._serial += 1
        stem = self.folder / f"leaf{self._serial}"
        csr, cert, key = stem.with_suffix(".csr"), stem.with_suffix(".crt"), stem.with_suffix(".key")
        ext = stem.with_suffix(".ext")
        ext.write_text(
            "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
            "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        )
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}", cwd=self.folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(self._serial), "-days", str(days), "-extfile", str(ext), "-out", str(cert),
            cwd=self.folder,
        )  # fmt: skip
        chain = stem.with_suffix(".chain.pem")
        chain.write_text(cert.read_text() + self.cert.read_text())
        return Pair(chain=chain, key=key)
