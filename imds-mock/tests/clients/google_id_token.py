"""google-auth's own ID-token path against the metadata server (GCE_METADATA_HOST and
GCE_METADATA_IP set by the calling test): fetch_id_token for an audience, then verify_token
against the key the mock publishes (CERTS_URL), as a service receiving the token would."""
import os

import google.auth.transport.requests
import google.oauth2.id_token
from google.auth import exceptions

AUDIENCE = "https://service.example/api"
request = google.auth.transport.requests.Request()
token = google.oauth2.id_token.fetch_id_token(request, AUDIENCE)
claims = google.oauth2.id_token.verify_token(
    token, request, audience=AUDIENCE, certs_url=os.environ["CERTS_URL"]
)
print(f"aud={claims['aud']}")
print(f"iss={claims['iss']}")
print(f"email={claims['email']}")
print(f"instance={claims.get('google', {}).get('compute_engine', {}).get('instance_id')}")
print(f"lifetime={claims['exp'] - claims['iat']}")
# A token for another audience is refused.
try:
    google.oauth2.id_token.verify_token(
        token, request, audience="https://other.example", certs_url=os.environ["CERTS_URL"]
    )
    print("other_audience=accepted")
except (ValueError, exceptions.GoogleAuthError):
    print("other_audience=refused")
# A token altered after signing is refused.
head, body, signature = token.split(".")
forged = ".".join([head, body[:-2] + ("AA" if body[-2:] != "AA" else "BB"), signature])
try:
    google.oauth2.id_token.verify_token(forged, request, certs_url=os.environ["CERTS_URL"])
    print("forged=accepted")
except (ValueError, exceptions.GoogleAuthError):
    print("forged=refused")
