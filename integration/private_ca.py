"""A throwaway private CA and server certificates made with the `openssl` command, for tests and
benchmarks that need real end-to-end TLS (the relay never holds these keys)."""

import os
import subprocess


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class PrivateCa:
    """`PrivateCa(directory)` makes ca.pem/ca.key there; `server(name)` issues a P-256 certificate
    for DNS name `name` and returns (cert_path, key_path)."""

    def __init__(self, directory, common_name="rdv test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.cert = os.path.join(directory, "ca.pem")
        self.key = os.path.join(directory, "ca.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2",
                 "-subj", f"/CN={common_name}", cwd=directory)

    def server(self, name):
        base = os.path.join(self.dir, name)
        ext = base + ".ext"
        with open(ext, "w", encoding="utf-8") as f:
            f.write(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"
                    "basicConstraints=CA:FALSE\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", base + ".key", "-out", base + ".csr", "-subj", f"/CN={name}",
                 cwd=self.dir)
        _openssl("x509", "-req", "-in", base + ".csr", "-CA", self.cert, "-CAkey", self.key,
                 "-CAcreateserial", "-out", base + ".pem", "-days", "2", "-extfile", ext,
                 cwd=self.dir)
        return base + ".pem", base + ".key"
