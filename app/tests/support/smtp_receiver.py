"""An SMTP server for ddms' e-mail channel tests: aiosmtpd, independent of lettre.

Usage: python3 smtp_receiver.py LOG_FILE MODE CERT KEY USERNAME PASSWORD

MODE is "starttls" (plain connection that must be upgraded with STARTTLS before anything
else), "tls" (TLS from the first byte) or "plain" (no TLS offered, no AUTH: a local relay).
With TLS, AUTH is offered only over TLS and accepts only USERNAME with PASSWORD; mail is
accepted only after AUTH. Listens on 127.0.0.1 (a free port),
prints "ready PORT", then serves until killed. Each accepted message is appended to LOG_FILE
as one JSON line: envelope sender and recipients, whether the session was upgraded with
STARTTLS, the TLS version, the authenticated login, and the parsed subject, headers and body.
"""

import asyncio
import email
import email.policy
import json
import logging
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult

# In "tls" mode the whole connection is TLS, which aiosmtpd's AUTH-without-TLS warning
# does not know.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
# aiosmtpd's own deprecation notices (login_data) and the TLS handshake failures a test
# provokes on purpose (a client that does not trust the certificate) would clutter the output.
warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger("mail.log").setLevel(logging.CRITICAL)

LOG_FILE, MODE, CERT, KEY, USERNAME, PASSWORD = sys.argv[1:7]


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == USERNAME.encode() and auth_data.password == PASSWORD.encode()
    # handled=False: aiosmtpd itself answers a failure (535).
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class Recorder:
    async def handle_DATA(self, server, session, envelope):
        ssl_object = server.transport.get_extra_info("ssl_object")
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "starttls": session.ssl is not None,
            "tls_version": ssl_object.version() if ssl_object else None,
            "authenticated": bool(session.authenticated),
            "login": session.auth_data.login.decode() if session.auth_data else None,
            "subject": str(message["subject"]),
            "headers": {k.lower(): str(v) for k, v in message.items()},
            "body": message.get_content(),
        }
        with open(LOG_FILE, "a") as log:
            log.write(json.dumps(record) + "\n")
        return "250 OK"


async def main():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CERT, KEY)
    handler = Recorder()

    def protocol():
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=context if MODE == "starttls" else None,
            require_starttls=MODE == "starttls",
            authenticator=authenticator,
            auth_required=MODE != "plain",
            # Implicit TLS is TLS too, though aiosmtpd only knows about STARTTLS.
            auth_require_tls=MODE == "starttls",
        )

    server = await asyncio.get_running_loop().create_server(
        protocol, "127.0.0.1", 0, ssl=context if MODE == "tls" else None
    )
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


asyncio.run(main())
