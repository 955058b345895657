//! Keys and the application's own format: refused keys, accepted spellings, Node-sealed vectors, sealing, fingerprints.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql_tests::support::*;

    #[pg_test]
    fn bad_keys_are_refused_naming_the_argument_never_its_value() {
        create_profiles("credential_profiles");
        let thirty_one = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==";
        for (old, new, arg, why) in [
            ("NULL".to_string(), quote(KEY_B), "old_key", "NULL"),
            (quote(KEY_A), "NULL".to_string(), "new_key", "NULL"),
            ("''".to_string(), quote(KEY_B), "old_key", "empty"),
            (quote(KEY_A), "'   '".into(), "new_key", "empty"),
            (
                "'not base64!'".to_string(),
                quote(KEY_B),
                "old_key",
                "base64",
            ),
            (quote(thirty_one), quote(KEY_B), "old_key", "31 bytes"),
            (quote(KEY_A), quote(&KEY_B[..20]), "new_key", "15 bytes"),
        ] {
            let sql = format!("SELECT * FROM credential_reencrypt({old}, {new})");
            let err = expect_error(&sql, "22023", arg);
            assert!(err.contains(why), "{sql}: {err}");
            for secret in [KEY_A, KEY_B, thirty_one, &KEY_B[..20]] {
                assert!(!err.contains(secret), "{err}");
            }
        }
        // The same key, also when written differently.
        let url_safe = KEY_A.replace('+', "-").replace('/', "_");
        expect_error(
            &format!(
                "SELECT * FROM credential_reencrypt({}, {})",
                quote(KEY_A),
                quote(&url_safe)
            ),
            "22023",
            "same key",
        );
        for f in [
            "credential_encrypt('{}'::text, 'short')",
            "credential_decrypt('{}'::text, NULL)",
            "credential_key_fingerprint('')",
            "credential_verify('nope')",
        ] {
            let err = expect_error(&format!("SELECT {f}"), "22023", "key");
            assert!(err.contains("key is not a valid key"), "{f}: {err}");
        }
    }

    #[pg_test]
    fn keys_are_accepted_as_the_application_accepts_them() {
        create_profiles("rot7");
        seed("rot7", 3, 0, KEY_A);
        let sloppy = format!(
            " {}\n",
            KEY_B
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_")
        );
        assert_eq!(reencrypt(KEY_A, &sloppy, ", 'rot7'"), (3, 3, 0, 0));
        assert_eq!(verify(KEY_B, ", 'rot7'"), (3, 0, 0, 0));
    }

    #[pg_test]
    fn node_sealed_vectors_open_in_the_extension() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let key_a = vectors["key_a"].as_str().unwrap();
        for good in vectors["good"].as_array().unwrap() {
            let opened = one::<String>(&format!(
                "SELECT credential_decrypt({}::jsonb, {})",
                quote(&good["envelope"].to_string()),
                quote(key_a)
            ));
            assert_eq!(opened.as_deref(), good["plaintext"].as_str());
            let from_text = one::<String>(&format!(
                "SELECT credential_decrypt({}::text, {})",
                quote(&good["envelope"].to_string()),
                quote(key_a)
            ));
            assert_eq!(from_text.as_deref(), good["plaintext"].as_str());
        }
        expect_error(
            &format!(
                "SELECT credential_decrypt({}::jsonb, {})",
                quote(&vectors["wrong_key"]["envelope"].to_string()),
                quote(key_a)
            ),
            "22000",
            "does not open",
        );
        assert_eq!(
            one::<String>(&format!(
                "SELECT credential_decrypt('{{}}'::jsonb, {})",
                quote(key_a)
            )),
            None
        );
    }

    #[pg_test]
    fn encrypt_writes_the_application_format() {
        let env = one::<pgrx::JsonB>(&format!(
            "SELECT credential_encrypt('{{\"username\": \"u\", \"password\": \"p\"}}'::jsonb, {})",
            quote(KEY_A)
        ))
        .unwrap()
        .0;
        let obj = env.as_object().unwrap();
        assert_eq!(obj["algorithm"], "aes-256-gcm");
        assert_eq!(obj["keyId"], "v1");
        assert_eq!(
            obj["iv"].as_str().unwrap().len(),
            16,
            "12 bytes, padded base64"
        );
        assert_eq!(
            obj["authTag"].as_str().unwrap().len(),
            24,
            "16 bytes, padded base64"
        );
        // The plaintext is JSON.stringify's compact form.
        let opened = one::<String>(&format!(
            "SELECT credential_decrypt({}::jsonb, {})",
            quote(&env.to_string()),
            quote(KEY_A)
        ));
        assert_eq!(
            opened.as_deref(),
            Some(r#"{"password":"p","username":"u"}"#)
        );
        assert_eq!(
            one::<pgrx::JsonB>(&format!(
                "SELECT credential_encrypt(NULL::jsonb, {})",
                quote(KEY_A)
            ))
            .map(|j| j.0),
            None
        );
    }

    #[pg_test]
    fn fingerprints_and_generated_keys() {
        assert_eq!(
            one::<String>(&format!(
                "SELECT credential_key_fingerprint({})",
                quote(KEY_A)
            ))
            .as_deref(),
            Some("8d3197a7dd0e26e7")
        );
        let distinct = one::<i64>(
            "SELECT count(DISTINCT k) FROM (SELECT credential_generate_key() k FROM generate_series(1, 20)) s
              WHERE length(k) = 44 AND decode(k, 'base64') IS NOT NULL",
        );
        assert_eq!(distinct, Some(20));
    }
}
