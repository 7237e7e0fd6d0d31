//! GCP identity tokens: `…/service-accounts/<account>/identity?audience=…` answers a JWT signed
//! RS256 by a key the mock makes when first asked. Its public half is served as Google serves
//! its own: `/oauth2/v1/certs` (`{kid: X.509 PEM}`, what google-auth verifies against by
//! default) and `/oauth2/v3/certs` (a JWK set), so a test can verify what it was given.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::EncodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer as _};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, sha2::Sha256};
use serde_json::{Value, json};

/// The issuer of Google's ID tokens.
pub const ISSUER: &str = "https://accounts.google.com";

/// The key tokens are signed with, and how it is published.
pub(crate) struct Signer {
    key: SigningKey<Sha256>,
    kid: String,
    jwk: Value,
    certificate: String,
}

impl Signer {
    /// A fresh 2048-bit RSA key and a self-signed certificate for it.
    pub(crate) fn new() -> Result<Self, String> {
        let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .map_err(|e| format!("making the identity key: {e}"))?;
        let public = private.to_public_key();
        let kid = crate::random_hex(40);
        let jwk = json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        let der = private
            .to_pkcs8_der()
            .map_err(|e| format!("encoding the identity key: {e}"))?;
        let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
        let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
            .map_err(|e| format!("loading the identity key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| format!("identity certificate: {e}"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imds-mock identity tokens");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let certificate = params
            .self_signed(&pair)
            .map_err(|e| format!("signing the identity certificate: {e}"))?
            .pem();
        Ok(Self {
            key: SigningKey::<Sha256>::new(private),
            kid,
            jwk,
            certificate,
        })
    }

    /// `claims` as a signed JWT.
    pub(crate) fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(signed.as_bytes()).to_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// `/oauth2/v1/certs`: key id → certificate PEM.
    pub(crate) fn certificates(&self) -> Value {
        json!({ self.kid.clone(): self.certificate })
    }

    /// `/oauth2/v3/certs`: the JWK set.
    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }
}

/// A stable 21-digit id for a service account (what `azp` and `sub` carry), from its email.
pub(crate) fn account_id(email: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    email.hash(&mut hasher);
    format!("1{:020}", hasher.finish())
}

/// The claims of an identity token for `email`, asked for `audience`, at `now` (seconds since
/// the epoch); `full` adds the instance's (`format=full`), `licenses` its licenses.
pub(crate) fn claims(
    gcp: &Value,
    email: &str,
    audience: &str,
    now: u64,
    full: bool,
    licenses: bool,
) -> Value {
    let id = account_id(email);
    let mut claims = json!({
        "aud": audience,
        "azp": id,
        "email": email,
        "email_verified": true,
        "exp": now + 3600,
        "iat": now,
        "iss": ISSUER,
        "sub": id,
    });
    if full {
        let instance = &gcp["instance"];
        let zone = instance["zone"]
            .as_str()
            .and_then(|z| z.rsplit('/').next())
            .unwrap_or("");
        let mut engine = json!({
            "instance_creation_timestamp": now.saturating_sub(86_400),
            "instance_id": instance["id"].to_string().trim_matches('"'),
            "instance_name": instance["name"],
            "project_id": gcp["project"]["projectId"],
            "project_number": gcp["project"]["numericProjectId"],
            "zone": zone,
        });
        if licenses {
            engine["license_id"] = json!(
                instance["licenses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["id"].as_str())
                    .collect::<Vec<_>>()
            );
        }
        claims["google"] = json!({ "compute_engine": engine });
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_the_published_key() {
        use rsa::pkcs1v15::{Signature, VerifyingKey};
        use rsa::signature::Verifier;
        let signer = Signer::new().unwrap();
        let token = signer.token(&json!({"aud": "x"}));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["kid"], signer.jwks()["keys"][0]["kid"]);
        // Rebuild the public key from the JWK, as a verifier would.
        let jwk = &signer.jwks()["keys"][0];
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
        let public = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&n),
            rsa::BigUint::from_bytes_be(&e),
        )
        .unwrap();
        let verifier = VerifyingKey::<Sha256>::new(public);
        let signature =
            Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        verifier.verify(signed.as_bytes(), &signature).unwrap();
        assert!(verifier.verify(b"tampered", &signature).is_err());
        assert!(
            signer.certificates()[header["kid"].as_str().unwrap()]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }
}
