"""botocore's own credential chain and IMDS region lookup, pointed at the mock only by
AWS_EC2_METADATA_SERVICE_ENDPOINT (set by the calling test)."""
import botocore.session
from botocore.utils import IMDSRegionProvider

session = botocore.session.get_session()
credentials = session.get_credentials()
if credentials is None:
    raise SystemExit("botocore found no credentials")
frozen = credentials.get_frozen_credentials()
print(f"method={credentials.method}")
print(f"access_key={frozen.access_key}")
print(f"region={IMDSRegionProvider(session).provide()}")
