"""A secured local broker: the client listener only SASL_SSL (SCRAM-SHA-256, a CA and a certificate made on the
spot with openssl), the standard authorizer with `allow.everyone.if.no.acl.found=false`, and only the ACLs the
embedder needs for its user (docs/operations.md, "Security"): ALL on topics, groups and transactional ids under
its prefix, nothing else. For tests and for trying the secured settings; the controller listener is plaintext on
loopback (its principal is a super user, as the broker's own) and serves no client request.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from embedder.services.kafka import LocalKafka
from embedder.services.process import ServiceError

SECURE_PORT = 29392
ADMIN = "admin"


@dataclass(frozen=True)
class SecureLocalKafka(LocalKafka):
    """`LocalKafka` with SASL_SSL and ACLs; `user`/`password` are the embedder's credentials."""

    port: int = SECURE_PORT
    user: str = "embedder"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets"

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._keep_secrets()

    def prepare(self, cluster_id: str | None = None) -> None:
        self._make_certificates()
        super().prepare(cluster_id)

    def _keep_secrets(self) -> None:
        """Credentials are chosen once per data directory (formatted storage holds their SCRAM hashes)."""
        if self.secrets_file.exists():
            user, password, admin_password = self.secrets_file.read_text().split()
            object.__setattr__(self, "password", password)
            object.__setattr__(self, "admin_password", admin_password)
            return
        self.secrets_file.write_text(f"{self.user} {self.password} {self.admin_password}\n")
        self.secrets_file.chmod(0o600)

    def _make_certificates(self) -> None:
        """A CA and the broker's certificate for 127.0.0.1 / localhost, once."""
        tls = self.root / "tls"
        if (tls / "broker.pem").exists():
            return
        tls.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            try:
                subprocess.run(["openssl", *args], cwd=tls, check=True, capture_output=True)
            except FileNotFoundError:
                raise ServiceError("openssl is required to make the secured broker's certificates") from None
            except subprocess.CalledProcessError as e:
                raise ServiceError(f"openssl {args[0]} failed: {e.stderr.decode(errors='replace')[-300:]}") from None

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-days", "30", "-subj", "/CN=embedder local test CA")  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
                "-subj", f"/CN={self.host}")  # fmt: skip
        (tls / "san.ext").write_text(f"subjectAltName=IP:{self.host},DNS:localhost\n")
        openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "broker.crt", "-days", "30", "-extfile", "san.ext")  # fmt: skip
        (tls / "broker.pem").write_text((tls / "broker.key").read_text() + (tls / "broker.crt").read_text())

    def _write_config(self) -> None:
        super()._write_config()
        tls = (self.root / "tls").resolve()
        lines = [
            line
            for line in self.config.read_text().splitlines()
            if not line.startswith(
                (
                    "listeners=",
                    "advertised.listeners=",
                    "inter.broker.listener.name=",
                    "listener.security.protocol.map=",
                )
            )  # fmt: skip
        ]
        jaas = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" ' + (
            f'password="{self.admin_password}";'
        )
        lines += [
            f"listeners=SASL_SSL://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            f"advertised.listeners=SASL_SSL://{self.host}:{self.port}",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={jaas}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={tls / 'broker.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={tls / 'ca.pem'}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{ADMIN};User:ANONYMOUS",
            "",
        ]
        self.config.write_text("\n".join(lines))

    def _format_options(self) -> list[str]:
        """The SCRAM users, written into the metadata log when the storage is formatted."""
        return [
            "--add-scram",
            f"SCRAM-SHA-256=[name={ADMIN},password={self.admin_password}]",
            "--add-scram",
            f"SCRAM-SHA-256=[name={self.user},password={self.password}]",
        ]

    def client_config(self, user: str | None = None, password: str | None = None) -> dict:
        """kafka-python keyword arguments for this broker (the admin's credentials unless given)."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": user or ADMIN,
            "sasl_plain_password": password or self.admin_password,
            "ssl_cafile": str(self.ca_file),
        }

    def env(self) -> dict[str, str]:
        """The embedder's settings for this broker, as its user."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "EMBEDDER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "EMBEDDER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "EMBEDDER_KAFKA_SASL_USERNAME": self.user,
            "EMBEDDER_KAFKA_SASL_PASSWORD": self.password,
            "EMBEDDER_KAFKA_SSL_CAFILE": str(self.ca_file.resolve()),
        }

    def allow_prefix(self, prefix: str) -> None:
        """The embedder's ACLs (docs/operations.md, "Security"): ALL on topics, groups and transactional ids whose
        names start with `prefix`, for its user only."""
        from kafka import KafkaAdminClient
        from kafka.admin import (
            ACL,
            ACLOperation,
            ACLPermissionType,
            ACLResourcePatternType,
            ResourcePattern,
            ResourceType,
        )

        admin = KafkaAdminClient(**self.client_config())
        try:
            result = admin.create_acls(
                [
                    ACL(
                        principal=f"User:{self.user}",
                        host="*",
                        operation=ACLOperation.ALL,
                        permission_type=ACLPermissionType.ALLOW,
                        resource_pattern=ResourcePattern(kind, prefix, ACLResourcePatternType.PREFIXED),
                    )
                    for kind in (ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID)
                ]
            )
            if result.get("failed"):
                raise ServiceError(f"creating the embedder's ACLs failed: {result['failed']}")
        finally:
            admin.close()
