//! `cargo xtask certs`: TLS material for a deployment — a CA, server certificates for the
//! dashboard (nginx or ddms) and the MQTT broker with the right SANs, and client certificates
//! for devices. Existing files are never overwritten without `--force`; every run reports what
//! exists and when it expires.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub struct Options {
    pub out: PathBuf,
    /// DNS names or IP addresses the dashboard and broker are reached at.
    pub hosts: Vec<String>,
    pub devices: Vec<String>,
    pub days: i64,
    pub force: bool,
}

/// Refuses options that cannot make sensible files.
pub fn validate(options: &Options) -> Result<()> {
    if !(1..=3650).contains(&options.days) {
        bail!("--days must be between 1 and 3650");
    }
    for device in &options.devices {
        if device.is_empty()
            || !device
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!("device id `{device}` may only hold letters, digits, '-', '_' and '.'");
        }
    }
    Ok(())
}

/// The CA that signs the leaves: its subject, key identifier, key usages and key.
type Authority = Issuer<'static, KeyPair>;

pub fn run(options: &Options) -> Result<()> {
    fs::create_dir_all(options.out.join("devices"))
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    let ca = authority(options)?;
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    hosts.extend(options.hosts.iter().cloned());
    for name in ["server", "broker"] {
        leaf(
            options,
            &ca,
            &options.out.join(name),
            name,
            &hosts,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
    }
    for device in &options.devices {
        leaf(
            options,
            &ca,
            &options.out.join("devices").join(device),
            device,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
    }
    report(&options.out)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A little backdating tolerates clocks that lag behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn authority(options: &Options) -> Result<Authority> {
    let cert_path = options.out.join("ca.crt");
    let key_path = options.out.join("ca.key");
    if cert_path.exists() && key_path.exists() && !options.force {
        let key = KeyPair::from_pem(&fs::read_to_string(&key_path)?)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        // The file's subject and key id become the leaves' issuer, so they chain to that CA.
        return Issuer::from_ca_cert_pem(&fs::read_to_string(&cert_path)?, key)
            .with_context(|| format!("cannot read {}", cert_path.display()));
    }
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "ddms CA");
    name.push(DnType::OrganizationName, "ddms");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, options.days.max(3650));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_key(&key_path, &key)?;
    fs::write(&cert_path, cert.pem())?;
    println!("certs: created CA {}", cert_path.display());
    Ok(Issuer::new(params, key))
}

fn leaf(
    options: &Options,
    ca: &Authority,
    stem: &Path,
    common_name: &str,
    hosts: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<()> {
    let cert_path = stem.with_extension("crt");
    let key_path = stem.with_extension("key");
    if cert_path.exists() && !options.force {
        println!(
            "certs: kept {} (use --force to replace)",
            cert_path.display()
        );
        return Ok(());
    }
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "ddms");
    params.distinguished_name = name;
    params.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(h.clone().try_into()?)),
        })
        .collect::<Result<Vec<_>, rcgen::Error>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, options.days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    write_key(&key_path, &key)?;
    fs::write(&cert_path, cert.pem())?;
    println!("certs: created {}", cert_path.display());
    Ok(())
}

/// Private keys are readable by their owner only, from the moment they exist.
fn write_key(path: &Path, key: &KeyPair) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(key.serialize_pem().as_bytes())?;
    Ok(())
}

/// Subject and expiry of every certificate in the directory (via openssl, which every host has).
fn report(out: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [out.to_path_buf(), out.join("devices")] {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "crt") {
                files.push(path);
            }
        }
    }
    files.sort();
    for file in files {
        let output = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-in"])
            .arg(&file)
            .output();
        let expiry = match output {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("notAfter=")
                .to_string(),
            _ => "expiry unknown (openssl not available)".into(),
        };
        println!("certs: {} expires {expiry}", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }

    fn options(out: &Path, devices: &[&str], force: bool) -> Options {
        Options {
            out: out.to_path_buf(),
            hosts: vec!["ddms.example.net".into(), "10.1.2.3".into()],
            devices: devices.iter().map(|d| d.to_string()).collect(),
            days: 30,
            force,
        }
    }

    #[test]
    fn certificates_chain_to_the_ca_with_the_right_names_and_private_keys() {
        let out = std::env::temp_dir().join(format!("ddms-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&out);
        run(&options(&out, &["sensor-1"], false)).unwrap();

        for (cert, purpose) in [
            ("server.crt", "sslserver"),
            ("broker.crt", "sslserver"),
            ("devices/sensor-1.crt", "sslclient"),
        ] {
            let (ok, text) = openssl(
                &out,
                &["verify", "-CAfile", "ca.crt", "-purpose", purpose, cert],
            );
            assert!(ok, "{cert}: {text}");
        }
        let (_, sans) = openssl(
            &out,
            &[
                "x509",
                "-noout",
                "-ext",
                "subjectAltName",
                "-in",
                "server.crt",
            ],
        );
        for name in [
            "DNS:localhost",
            "DNS:ddms.example.net",
            "IP Address:127.0.0.1",
            "IP Address:10.1.2.3",
        ] {
            assert!(sans.contains(name), "{name} missing in {sans}");
        }
        for key in ["ca.key", "server.key", "broker.key", "devices/sensor-1.key"] {
            let mode = fs::metadata(out.join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }

        // A second run keeps everything; a new device later still chains to the same CA.
        let before = fs::read(out.join("server.crt")).unwrap();
        let ca_before = fs::read(out.join("ca.crt")).unwrap();
        run(&options(&out, &["sensor-2"], false)).unwrap();
        assert_eq!(fs::read(out.join("server.crt")).unwrap(), before);
        assert_eq!(fs::read(out.join("ca.crt")).unwrap(), ca_before);
        let (ok, text) = openssl(
            &out,
            &[
                "verify",
                "-CAfile",
                "ca.crt",
                "-purpose",
                "sslclient",
                "devices/sensor-2.crt",
            ],
        );
        assert!(ok, "{text}");

        // --force replaces them.
        run(&options(&out, &[], true)).unwrap();
        assert_ne!(fs::read(out.join("server.crt")).unwrap(), before);
        fs::remove_dir_all(&out).unwrap();
    }
}
