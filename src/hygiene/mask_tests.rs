use super::*;

const OLD: &str = "y7QfQGeSfw6u8HWZuarB5M6BDtgzAkRg7bi7ybO8U4Q=";
const NEW: &str = "PqY24adaBxBoQtbZuDIC7KFXE1iJzoKgRpTDjZVmOsc=";

fn masked(text: &str) -> String {
    masked_with(text, true)
}

fn masked_with(text: &str, standard_strings: bool) -> String {
    let mut bytes = text.as_bytes().to_vec();
    if let Some(plan) = plan(&bytes, standard_strings) {
        plan.apply(&mut bytes);
    }
    let out = String::from_utf8(bytes).unwrap(); // ok: '*' replaces whole literals' bytes
    assert_eq!(out.len(), text.len(), "{text}");
    out
}

fn stars(s: &str) -> String {
    "*".repeat(s.len())
}

/// Asserts that no key and no long part of one is left.
fn keyless(out: &str) {
    for key in [OLD, NEW] {
        assert!(
            !out.contains(&key[..16]) && !out.contains(&key[20..36]),
            "{out}"
        );
    }
}

#[test]
fn every_key_taking_function_is_named_in_any_spelling() {
    for f in KEY_TAKING {
        let name = f.name;
        let upper = name.to_ascii_uppercase();
        for text in [
            format!("SELECT * FROM {name}('k', 'k')"),
            format!("select * from public.{name}(old_key => 'k')"),
            format!("SELECT \"{name}\"('k')"),
            format!("SELECT myschema.\"{name}\"\n('k')"),
            format!("CALL {upper}('k','k')"),
            name.to_owned(),
        ] {
            assert!(names_key_taking_function(text.as_bytes()), "{text}");
        }
    }
}

#[test]
fn every_name_holds_the_part_the_quick_check_looks_for() {
    for f in KEY_TAKING {
        assert!(f.name.contains("credential"), "{}", f.name);
    }
}

#[test]
fn application_queries_and_other_names_are_not_matched() {
    for text in [
        "SELECT * FROM credential_profiles WHERE id = (1/0)::text",
        "UPDATE credential_profiles SET secret = $1 WHERE id = $2",
        "INSERT INTO credential_rotation_audit VALUES (1)",
        "SELECT credential_generate_key()",
        "SELECT credential_reencrypt_row(1)",
        "SELECT my_credential_reencrypt('k', 'k')",
        "SELECT credential_reencrypt2('k', 'k')",
        "SELECT credential_decrypt$x('k')",
        "SELECT credential_verifyä('k')",
        "SELECT credential_encryp('k')",
        "SELECT 1",
        "",
    ] {
        assert!(!names_key_taking_function(text.as_bytes()), "{text}");
        assert_eq!(plan(text.as_bytes(), true), None, "{text}");
    }
}

#[test]
fn a_name_among_other_statements_or_in_a_literal_still_counts() {
    assert!(names_key_taking_function(
        b"SELECT 1/0; SELECT credential_reencrypt('k', 'k')"
    ));
    assert!(names_key_taking_function(b"SELECT 'credential_decrypt'"));
    assert!(names_key_taking_function(
        b"DO $$ BEGIN PERFORM credential_verify('k'); END $$"
    ));
}

#[test]
fn key_arguments_are_masked_and_table_names_stay() {
    let text = format!(
        "SELECT * FROM credential_reencrypt('{OLD}', '{NEW}', 'credential_profiles', 'secret')"
    );
    assert_eq!(
        masked(&text),
        format!(
            "SELECT * FROM credential_reencrypt('{}', '{}', 'credential_profiles', 'secret')",
            stars(OLD),
            stars(NEW)
        )
    );
    // Short or invalid keys are masked by position as well.
    assert_eq!(
        masked("SELECT credential_key_fingerprint('  not a key ')"),
        "SELECT credential_key_fingerprint('************')"
    );
    assert_eq!(
        masked("SELECT credential_verify('k', target_table => 't')"),
        "SELECT credential_verify('*', target_table => 't')"
    );
}

#[test]
fn named_arguments_in_any_order_and_misspelt_names() {
    let text = format!(
        "SELECT * FROM credential_reencrypt(target_table := 'profiles', new_key => '{NEW}', \
         OLD_KEY => '{OLD}', nw_key => 'x', dry_run => true)"
    );
    let out = masked(&text);
    keyless(&out);
    assert!(out.contains("target_table := 'profiles'"), "{out}");
    assert!(out.contains("nw_key => '*'"), "{out}");
}

#[test]
fn every_literal_spelling_of_a_key() {
    for (text, standard) in [
        (format!("SELECT credential_verify(E'{OLD}\\n')"), true),
        (format!("SELECT credential_verify(E'\\'{OLD}')"), true),
        (format!("SELECT credential_verify('{OLD}\\')"), true),
        (format!("SELECT credential_verify('it\\'s {OLD}')"), false),
        (
            format!("SELECT credential_verify(U&'{OLD}' UESCAPE '!')"),
            true,
        ),
        (format!("SELECT credential_verify(N'{OLD}')"), true),
        (format!("SELECT credential_verify($$ {OLD} $$)"), true),
        (format!("SELECT credential_verify($k${OLD}$k$)"), true),
        (format!("SELECT credential_verify(('{OLD}')::text)"), true),
        (
            format!("SELECT credential_verify(trim(' ' || '{OLD}'))"),
            true,
        ),
        (
            format!("SELECT credential_verify\n/* c */ ( -- c\n '{OLD}')"),
            true,
        ),
        (
            format!("SELECT public.\"credential_verify\"('{OLD}')"),
            true,
        ),
    ] {
        let out = masked_with(&text, standard);
        keyless(&out);
    }
}

#[test]
fn arrays_of_keys() {
    for text in [
        format!("SELECT * FROM credential_key_census(ARRAY['{OLD}', '{NEW}'])"),
        format!("SELECT * FROM credential_key_census('{{{OLD},{NEW}}}'::text[])"),
        format!(
            "SELECT * FROM credential_reencrypt(ARRAY['{OLD}'], '{NEW}', 'credential_profiles')"
        ),
        format!(
            "CALL credential_reencrypt_batched(old_keys => ARRAY[E'{OLD}'], new_key => '{NEW}')"
        ),
    ] {
        let out = masked(&text);
        keyless(&out);
        assert!(!out.contains("'credential_profiles'") || text.contains("'credential_profiles'"));
    }
}

#[test]
fn keys_outside_argument_positions() {
    for text in [
        format!("WITH k(o, n) AS (VALUES ('{OLD}', '{NEW}')) SELECT r.* FROM k, credential_reencrypt(k.o, k.n) r"),
        format!("SELECT credential_verify(k) FROM (SELECT '{OLD}' AS k) s"),
        format!(
            "DO $$ DECLARE o text := '{OLD}'; n text := '{NEW}'; \
             BEGIN PERFORM credential_reencrypt(o, n); END $$"
        ),
    ] {
        keyless(&masked(&text));
    }
}

#[test]
fn code_in_literals_is_masked_inside() {
    let text = format!(
        "DO $do$ BEGIN EXECUTE 'SELECT * FROM credential_reencrypt(''{OLD}'', ''{NEW}'', ''t'')'; END $do$"
    );
    let out = masked(&text);
    keyless(&out);
    assert!(out.contains("''t''"), "{out}");
    // Two levels deep, and E'' escapes of the inner quotes.
    let text = format!(
        "DO $a$ BEGIN EXECUTE $b$ DO $c$ BEGIN PERFORM credential_verify(E'\\'{OLD}'); END $c$ $b$; END $a$"
    );
    keyless(&masked(&text));
}

#[test]
fn every_statement_of_a_multi_statement_text() {
    let text = format!(
        "SELECT credential_key_fingerprint('{OLD}'); SELECT 1; SELECT credential_key_fingerprint('{NEW}')"
    );
    let out = masked(&text);
    keyless(&out);
    assert!(out.contains("SELECT 1;"));
}

#[test]
fn parameters_in_key_positions_are_secret_others_shown() {
    let p = plan(
        b"SELECT * FROM credential_reencrypt($1, $2, target_table => $3) WHERE $4 > 0",
        true,
    )
    .unwrap(); // ok: names a key-taking function
    assert!(!p.shows_param(1) && !p.shows_param(2));
    assert!(p.shows_param(3) && p.shows_param(4));
    assert!(
        !p.shows_param(5),
        "a value the text does not use is not shown"
    );
    let p = plan(b"SELECT credential_verify($1 || $2, $1)", true).unwrap(); // ok: as above
    assert!(!p.shows_param(1) && !p.shows_param(2));
}

#[test]
fn masking_is_idempotent_and_keeps_every_offset() {
    let text = format!("SELECT credential_verify('{OLD}'), 'x' FROM t WHERE a = 'b'");
    let once = masked(&text);
    assert_eq!(masked(&once), once);
    assert_eq!(once.find("'x'"), text.find("'x'"));
}

#[test]
fn other_literals_of_a_naming_statement_stay() {
    let text = "SELECT credential_verify(k), 'credential_profiles_of_the_eastern_region_archive_2024' FROM t";
    assert_eq!(masked(text), text);
}

#[test]
fn key_shapes() {
    assert!(looks_like_a_key(OLD.as_bytes()));
    assert!(looks_like_a_key(format!("not-a-key-{NEW}").as_bytes()));
    assert!(looks_like_a_key(&OLD.as_bytes()[..43]));
    assert!(!looks_like_a_key(&OLD.as_bytes()[..42]));
    assert!(!looks_like_a_key(
        b"credential_profiles_of_the_eastern_region_archive"
    ));
    assert!(!looks_like_a_key(
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    ));
}

#[test]
fn occurrences() {
    let mut text = b"a KEYKEY b KEY".to_vec();
    assert!(mask_occurrences(&mut text, b"KEY"));
    assert_eq!(&text, b"a ****** b ***");
    assert!(!mask_occurrences(&mut text, b"KEY"));
    assert_eq!(key_core(b"  short "), None);
    assert_eq!(
        key_core(format!(" {OLD}\n").as_bytes()),
        Some(OLD.as_bytes())
    );
}

#[test]
fn arbitrary_bytes_never_panic_and_keep_their_length() {
    // A small deterministic generator over the bytes that matter to the lexer.
    let alphabet = b"'\"$\\()[],;:=>-/*eEuU&xB credential_verify 0123 \n\xc3\xa4";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        let mut text = b"credential_verify(".to_vec();
        for _ in 0..(state % 40) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        for standard in [true, false] {
            let mut bytes = text.clone();
            if let Some(p) = plan(&bytes, standard) {
                p.apply(&mut bytes);
                for r in &p.ranges {
                    assert!(r.end <= text.len());
                }
            }
            assert_eq!(bytes.len(), text.len());
        }
    }
}
