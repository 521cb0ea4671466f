"""The providers' side of each webhook signature, with keys made for the tests: Amazon SNS (RSA
over the canonical string, a self-signed certificate handed to the app through its
certificate-fetch seam), SendGrid (ECDSA P-256 over timestamp + body), Mailgun (HMAC-SHA256 of
timestamp + token); Postmark signs nothing (basic auth). And a client that POSTs over real HTTP."""

from __future__ import annotations

import base64
import json
import time
from typing import Any


class Signers:
    """The providers' side of each signature, with keys made for the test."""

    def __init__(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        self.sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.sns_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                         .public_key(self.sns_key.public_key()).serial_number(1)
                         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                         .sign(self.sns_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        self.cert_url = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem"
        self.sendgrid_key = ec.generate_private_key(ec.SECP256R1())
        self.sendgrid_public = base64.b64encode(self.sendgrid_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
        self.mailgun_key = "key-mailgun-signing-for-tests"
        self.topic = "arn:aws:sns:us-east-1:123456789012:ses-bounces"

    def sns(self, message: dict[str, object] | str, *, timestamp: float | None = None,
            message_id: str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324", version: str = "1",
            cert_url: str | None = None) -> bytes:
        """An SNS Notification carrying ``message`` (JSON-encoded unless a string), signed."""
        envelope = {"Type": "Notification", "MessageId": message_id, "TopicArn": self.topic,
                    "Message": message if isinstance(message, str) else json.dumps(message),
                    "SignatureVersion": version, "SigningCertURL": cert_url or self.cert_url,
                    "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x"}
        return self.sns_envelope(envelope, timestamp=timestamp)

    def sns_envelope(self, envelope: dict[str, Any], *, timestamp: float | None = None) -> bytes:
        """``envelope`` (any SNS message: Notification, SubscriptionConfirmation, ...) stamped
        ``timestamp`` (now: SNS stamps a message when it publishes it) and signed as SNS signs its
        SignatureVersion (1: SHA1withRSA, 2: SHA256withRSA)."""
        import datetime

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        envelope = dict(envelope)
        stamp = datetime.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, datetime.timezone.utc)
        envelope["Timestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        names = (["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"] if envelope["Type"] == "Notification"
                 else ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"])
        text = "".join(f"{k}\n{envelope[k]}\n" for k in names if k in envelope)
        digest = hashes.SHA1() if str(envelope.get("SignatureVersion")) == "1" else hashes.SHA256()
        envelope["Signature"] = base64.b64encode(self.sns_key.sign(text.encode(), padding.PKCS1v15(), digest)).decode()
        return json.dumps(envelope).encode()

    def sendgrid(self, events: list[dict[str, object]], timestamp: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(events).encode()
        return body, self.sendgrid_headers(body, timestamp)

    def sendgrid_headers(self, body: bytes, timestamp: str) -> dict[str, str]:
        """SendGrid's signature headers for any body (it signs the bytes, whatever they hold)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature = self.sendgrid_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp}

    def mailgun(self, payload: dict[str, object], timestamp: str) -> bytes:
        import hashlib
        import hmac

        payload = json.loads(json.dumps(payload))
        sig = payload["signature"]
        sig["timestamp"] = timestamp
        sig["signature"] = hmac.new(self.mailgun_key.encode(), f"{timestamp}{sig['token']}".encode(),
                                    hashlib.sha256).hexdigest()
        return json.dumps(payload).encode()


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        data = exc.read()
        return exc.code, json.loads(data) if exc.headers.get("Content-Type") == "application/json" else {"text": data}
