//! Throwaway certificates (`evchat cert`): a CA made for the occasion and a
//! server certificate it signs for the names given. The CA's key is never
//! written, so nothing more can be signed with it, and the CA may vouch
//! only for those names (name constraints), so trusting it risks nothing
//! beyond them.

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A CA, the server certificate it signed and that certificate's key, as PEM.
pub struct Throwaway {
    /// The CA's certificate: what clients and browsers are told to trust.
    pub ca_pem: String,
    /// The server's certificate, then the CA's (the chain `--tls-cert` takes).
    pub cert_pem: String,
    /// The server certificate's private key (PKCS#8).
    pub key_pem: String,
}

/// Why no certificate could be made.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("no host name given")]
    NoNames,
    #[error("'{0}' is not a host name or an IP address")]
    BadName(String),
    #[error("cannot make the certificate: {0}")]
    Signing(#[from] rcgen::Error),
    #[error("no random bytes from the system: {0}")]
    Random(String),
}

/// Issues a CA and a server certificate for `names` (host names or IP
/// addresses), both valid from `not_before` to `not_after`.
pub fn throwaway(
    names: &[String],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Throwaway, GenerateError> {
    let first = names.first().ok_or(GenerateError::NoNames)?;
    let mut subjects = Vec::new();
    let mut permitted = Vec::new();
    for name in names {
        if let Ok(ip) = name.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            subjects.push(SanType::IpAddress(ip));
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                ip, bits,
            )));
        } else {
            let dns = name
                .as_str()
                .try_into()
                .map_err(|_| GenerateError::BadName(name.clone()))?;
            subjects.push(SanType::DnsName(dns));
            permitted.push(GeneralSubtree::DnsName(name.clone()));
        }
    }
    // A time as rcgen takes it (whole seconds since 1970; earlier is 1970).
    let date = |at: SystemTime| {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since.as_secs())
    };
    let (not_before, not_after) = (date(not_before), date(not_after));

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    // A name of its own, so that two throwaway CAs are never taken for one.
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| GenerateError::Random(e.to_string()))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    ca.distinguished_name = named(&format!("evchat throwaway CA {tag} for {first}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::default();
    server.distinguished_name = named(first);
    server.subject_alt_names = subjects;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.not_before = not_before;
    server.not_after = not_after;
    let cert = server.signed_by(&key, &issuer)?;
    Ok(Throwaway {
        ca_pem: ca_cert.pem(),
        cert_pem: format!("{}{}", cert.pem(), ca_cert.pem()),
        key_pem: key.serialize_pem(),
    })
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
