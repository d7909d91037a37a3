use super::*;

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name raw so unsafe names can be tested.
        let name = path.as_bytes();
        if let Some(old) = h.as_old_mut().name.get_mut(..name.len()) {
            old.copy_from_slice(name);
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

const POLICY: &[u8] = b"package authz\nimport rego.v1\ndefault allow := false\nallow if input.user in data.authz.users\n";

#[test]
fn a_data_integer_beyond_64_bits_is_refused_not_rounded() {
    let bytes = tar_gz(&[
        ("authz/policy.rego", POLICY),
        ("authz/data.json", br#"{"ids": [1, 100000000000000000001]}"#),
    ]);
    let err = Bundle::from_tar_gz(&bytes, &BundleLimits::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("authz/data.json"), "{err}");
    assert!(
        err.contains("100000000000000000001 does not fit in 64 bits"),
        "{err}"
    );
    let ok = tar_gz(&[(
        "authz/data.json",
        br#"{"n": 18446744073709551615, "f": 1e30}"#,
    )]);
    assert!(Bundle::from_tar_gz(&ok, &BundleLimits::default()).is_ok());
}

#[test]
fn unpacks_modules_data_and_manifest() {
    let bytes = tar_gz(&[
        ("/.manifest", br#"{"revision": "v7", "roots": ["authz"]}"#),
        ("/authz/policy.rego", POLICY),
        ("/authz/policy_test.rego", b"package authz_test\n"),
        ("./authz/data.json", br#"{"users": ["alice"]}"#),
        ("README.md", b"ignored"),
    ]);
    let b = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap();
    assert_eq!(b.revision(), Some("v7"));
    assert_eq!(b.modules.len(), 1);
    assert_eq!(b.modules[0].0, "authz/policy.rego");
    assert_eq!(b.data, serde_json::json!({"authz": {"users": ["alice"]}}));
    let set = b
        .build(&["data.authz.allow".to_string()], PolicyOptions::default())
        .unwrap();
    assert_eq!(set.revision(), "v7");
    let input = regorus::Value::from_json_str(r#"{"user": "alice"}"#).unwrap();
    assert!(set.evaluate(0, input).unwrap().allowed);
}

#[test]
fn rejects_traversal_links_duplicates_and_roots() {
    let bytes = tar_gz(&[("../../etc/passwd.rego", POLICY)]);
    let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::UnsafeEntry {
                why: "path traversal",
                ..
            }
        ),
        "{e}"
    );

    let bytes = tar_gz(&[("a/../../x/data.json", b"{}")]);
    assert!(Bundle::from_tar_gz(&bytes, &BundleLimits::default()).is_err());

    let bytes = tar_gz(&[("/p.rego", POLICY), ("p.rego", POLICY)]);
    let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::UnsafeEntry {
                why: "duplicate entry",
                ..
            }
        ),
        "{e}"
    );

    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "evil.rego", "/etc/passwd").unwrap();
    let bytes = b.into_inner().unwrap().finish().unwrap();
    let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::UnsafeEntry {
                why: "links are not allowed",
                ..
            }
        ),
        "{e}"
    );

    let bytes = tar_gz(&[
        (".manifest", br#"{"roots": ["other"]}"#),
        ("p.rego", POLICY),
    ]);
    let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
    assert!(matches!(e, BundleError::Roots(_)), "{e}");
    let bytes = tar_gz(&[
        (".manifest", br#"{"roots": ["authz"]}"#),
        ("data.json", br#"{"authz": {"x": 1}, "other": 2}"#),
    ]);
    let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
    assert!(e.to_string().contains("data.other"), "{e}");
}

#[test]
fn size_limits() {
    let big = vec![b' '; 200_000];
    let bytes = tar_gz(&[("data.json", &big)]);
    let limits = BundleLimits {
        max_unpacked: 100_000,
        ..BundleLimits::default()
    };
    let e = Bundle::from_tar_gz(&bytes, &limits).unwrap_err();
    assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
    let limits = BundleLimits {
        max_download: 10,
        ..BundleLimits::default()
    };
    let e = Bundle::from_tar_gz(&bytes, &limits).unwrap_err();
    assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
    let e = Bundle::from_tar_gz(b"not gzip at all", &BundleLimits::default()).unwrap_err();
    assert!(matches!(e, BundleError::Archive(_)), "{e}");
}
