"""The TLS listener's context, and how it changes certificates without a restart.

The listener keeps one `front` context for its whole life (asyncio takes it at
`create_server`). Each handshake's server-name callback, which OpenSSL runs on every
ClientHello with or without SNI, moves the new connection onto `current`: the context built
from the files as they were at the last load. A reload builds a new one and swaps it in, so
new connections get the new certificate and CA while established ones keep theirs. A reload
whose files are bad keeps the old context and reports the error.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from kestrelq.errors import ConfigError

logger = logging.getLogger(__name__)

VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str = ""  # empty: the key is in the certificate file
    ca: str = ""  # CA file that client certificates must chain to
    verify: str = "none"  # none | optional | required (mutual TLS)


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS {what} {path}: {exc.strerror}") from None


def build_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context from the files; ConfigError naming the file that is missing or bad."""
    if files.verify not in VERIFY_MODES:
        raise ConfigError(f"tls_verify must be none, optional or required, not {files.verify!r}")
    if not files.cert:
        raise ConfigError("a TLS listener needs tls_cert (and tls_key unless the cert holds it)")
    if files.verify != "none" and not files.ca:
        raise ConfigError(f"tls_verify {files.verify} needs tls_ca to check client certificates")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _readable(files.cert, "certificate")
    if files.key:
        _readable(files.key, "key")
    try:
        ctx.load_cert_chain(files.cert, files.key or None)
    except ssl.SSLError as exc:
        key = f" with key {files.key}" if files.key else ""
        raise ConfigError(
            f"TLS certificate {files.cert}{key}: not a usable certificate and key "
            f"({exc.reason or exc})"
        ) from None
    if files.ca:
        _readable(files.ca, "CA file")
        try:
            ctx.load_verify_locations(cafile=files.ca)
        except ssl.SSLError as exc:
            reason = exc.reason or exc
            raise ConfigError(f"TLS CA file {files.ca}: no usable certificate ({reason})") from None
    ctx.verify_mode = VERIFY_MODES[files.verify]
    return ctx


class TlsContexts:
    """The listener's fixed front context and the current one that handshakes switch to."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.current = build_context(files)
        self.front = build_context(files)
        self.front.sni_callback = self._switch

    def _switch(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        # The verify mode stays the front's (it never changes on reload); the certificate,
        # key and CA store are taken from the context set here.
        sslobj.context = self.current

    def reload(self) -> None:
        """Re-read the files for new connections; ConfigError (the old ones kept) if bad."""
        self.current = build_context(self.files)
        logger.info("reloaded TLS certificate %s", self.files.cert)
