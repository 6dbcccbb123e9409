//! Identifiers with a known shape: ONS GSS codes for local authorities, and the raw personal
//! identifiers (NHS number, National Insurance number) that must never appear in a Kafka key
//! or header.

/// GSS entity codes that denote a local authority, with what each one is.
pub const LOCAL_AUTHORITY_ENTITIES: &[(&str, &str)] = &[
    ("E06", "unitary authority (England)"),
    ("E07", "non-metropolitan district (England)"),
    ("E08", "metropolitan borough (England)"),
    ("E09", "London borough"),
    ("E10", "county (England)"),
    ("W06", "unitary authority (Wales)"),
    ("S12", "council area (Scotland)"),
    ("N09", "district (Northern Ireland)"),
];

/// Checks that `code` is a local-authority GSS code: a known 3-character entity code and six
/// digits, for example `E06000002`. Returns why not.
pub fn check_gss(code: &str) -> Result<(), String> {
    let bytes = code.as_bytes();
    if bytes.len() != 9 || !code.is_ascii() {
        return Err(format!(
            "'{code}' is not a GSS code: expected 9 characters, such as E06000002"
        ));
    }
    let (entity, number) = code.split_at(3);
    if !LOCAL_AUTHORITY_ENTITIES.iter().any(|(e, _)| *e == entity) {
        let known: Vec<&str> = LOCAL_AUTHORITY_ENTITIES.iter().map(|(e, _)| *e).collect();
        return Err(format!(
            "'{code}' does not name a local authority: entity code '{entity}' is not one of {}",
            known.join(", ")
        ));
    }
    if !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{code}' is not a GSS code: the last six characters must be digits"
        ));
    }
    Ok(())
}

/// True when `s` is, or contains only, a valid NHS number (10 digits with a correct
/// modulus-11 check digit), ignoring spaces and hyphens.
pub fn looks_like_nhs_number(s: &str) -> bool {
    let digits: Vec<u32> = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .unwrap_or_default();
    if digits.len() != 10 {
        return false;
    }
    let sum: u32 = digits[..9]
        .iter()
        .enumerate()
        .map(|(i, d)| d * (10 - i as u32))
        .sum();
    let check = 11 - (sum % 11);
    match check {
        11 => digits[9] == 0,
        10 => false,
        c => digits[9] == c,
    }
}

/// True when `s` has the shape of a National Insurance number: two letters, six digits and an
/// optional suffix letter A–D, ignoring spaces and case.
pub fn looks_like_nino(s: &str) -> bool {
    // Checked on every subject and correlation id published, so without allocating.
    let mut buf = ['\0'; 9];
    let mut n = 0;
    for c in s.chars().filter(|c| *c != ' ') {
        let Some(slot) = buf.get_mut(n) else {
            return false;
        };
        *slot = c.to_ascii_uppercase();
        n += 1;
    }
    let compact = &buf[..n];
    let body_ok = |c: &[char]| {
        c[..2].iter().all(char::is_ascii_uppercase) && c[2..8].iter().all(char::is_ascii_digit)
    };
    match compact.len() {
        8 => body_ok(compact),
        9 => body_ok(compact) && matches!(compact[8], 'A'..='D'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gss_codes_of_local_authorities_are_accepted() {
        for code in [
            "E06000002",
            "E07000223",
            "E09000033",
            "W06000015",
            "S12000036",
            "N09000003",
        ] {
            assert_eq!(check_gss(code), Ok(()), "{code}");
        }
    }

    #[test]
    fn malformed_gss_codes_are_refused_with_a_reason() {
        assert!(check_gss("E0600002").unwrap_err().contains("9 characters"));
        assert!(check_gss("E05000002").unwrap_err().contains("'E05'"));
        assert!(check_gss("E0600000X").unwrap_err().contains("digits"));
        assert!(check_gss("e06000002").is_err());
        assert!(check_gss("E06000é02").is_err());
    }

    #[test]
    fn valid_nhs_numbers_are_spotted_and_near_misses_are_not() {
        assert!(looks_like_nhs_number("9434765919"));
        assert!(looks_like_nhs_number("943 476 5919"));
        assert!(!looks_like_nhs_number("9434765918"));
        assert!(!looks_like_nhs_number("psn:9434765919"));
    }

    #[test]
    fn national_insurance_numbers_are_spotted() {
        assert!(looks_like_nino("QQ123456C"));
        assert!(looks_like_nino("qq 12 34 56 c"));
        assert!(looks_like_nino("AB123456"));
        assert!(!looks_like_nino("QQ123456E"));
        assert!(!looks_like_nino("psn-4c1f0b7e"));
        assert!(!looks_like_nino("QQ123456CA"), "one letter too many");
    }
}
