"""google-auth's metadata server detection and Compute Engine credentials, pointed at the mock
only by GCE_METADATA_HOST and GCE_METADATA_IP (set by the calling test)."""
import google.auth
import google.auth.transport.requests
from google.auth.compute_engine import _metadata

request = google.auth.transport.requests.Request()
print(f"on_gce={_metadata.is_on_gce(request)}")
credentials, project = google.auth.default()
print(f"project={project}")
credentials.refresh(request)
print(f"token={credentials.token}")
print(f"email={credentials.service_account_email}")
