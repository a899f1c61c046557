//! Identifiers carried by records: identity document numbers, unified social credit
//! codes, mobile numbers, person names and vehicle plates.
//!
//! Every type here is parse-don't-validate: a value exists only if it passed its rule.
//!
//! Personal data ([`IdNumber`], [`Mobile`], [`PersonName`]) never leaves this module in
//! clear through `Debug` or `Display`: both print the masked form, so a value that
//! slips into a log line or an error does not leak. Use `as_str()` for the real value.
//! Error messages never quote any part of the rejected input.
//!
//! Credit codes and plates identify organisations and vehicles, not people, and are
//! shown in full.

use std::fmt;

use chrono::{Datelike, NaiveDate};

/// The kind of identity document a worker presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdType {
    /// Resident identity card of the PRC (GB 11643-1999), code `RESIDENT_ID`.
    ResidentId,
    /// Residence permit for Hong Kong and Macao residents, code `HK_MACAO_PERMIT`.
    HkMacaoPermit,
    /// Residence permit for Taiwan residents, code `TAIWAN_PERMIT`.
    TaiwanPermit,
    /// Foreigner's permanent residence ID card, code `FOREIGN_PERMANENT_RESIDENT`.
    ForeignPermanentResident,
}

impl IdType {
    /// Parses a wire code. Unknown codes (including the empty string) give `None`;
    /// any default for a missing code is the caller's decision.
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "RESIDENT_ID" => Some(Self::ResidentId),
            "HK_MACAO_PERMIT" => Some(Self::HkMacaoPermit),
            "TAIWAN_PERMIT" => Some(Self::TaiwanPermit),
            "FOREIGN_PERMANENT_RESIDENT" => Some(Self::ForeignPermanentResident),
            _ => None,
        }
    }

    /// The wire code of this type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResidentId => "RESIDENT_ID",
            Self::HkMacaoPermit => "HK_MACAO_PERMIT",
            Self::TaiwanPermit => "TAIWAN_PERMIT",
            Self::ForeignPermanentResident => "FOREIGN_PERMANENT_RESIDENT",
        }
    }
}

/// Why an identity document number was rejected. Messages never contain the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdNumberError {
    /// Wrong number of characters for the document type.
    #[error("identity number has the wrong length")]
    Length,
    /// A character outside the allowed set (including any non-ASCII character).
    #[error("identity number contains invalid characters")]
    Characters,
    /// The check character does not match the preceding characters.
    #[error("identity number check character does not match")]
    CheckCharacter,
    /// The embedded birth date is not a real calendar date.
    #[error("identity number has an invalid birth date")]
    BirthDate,
    /// The embedded birth date is after today.
    #[error("identity number has a birth date in the future")]
    FutureBirthDate,
    /// The embedded birth year is before 1900: not a living worker (records.md,
    /// INVALID_ID_NUMBER).
    #[error("identity number has a birth year before 1900")]
    BirthYearBefore1900,
    /// The first two digits are not a province-level division code.
    #[error("identity number has an invalid province code")]
    ProvincePrefix,
    /// The number does not have the layout required by its document type.
    #[error("identity number does not match the format of its document type")]
    Format,
}

/// A validated identity document number. `Debug` and `Display` are masked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdNumber {
    id_type: IdType,
    value: String,
}

impl IdNumber {
    /// Validates `s` as a number of type `id_type`; birth dates must not be after `today`.
    ///
    /// A trailing lower-case `x` is normalised to `X`. Resident IDs get the full
    /// GB 11643-1999 check (province, birth date, check character); the permits get a
    /// format and birth-date check; foreign permanent resident IDs a format check.
    pub fn parse(id_type: IdType, s: &str, today: NaiveDate) -> Result<Self, IdNumberError> {
        if !s.is_ascii() {
            return Err(IdNumberError::Characters);
        }
        let value = match s.strip_suffix('x') {
            Some(head) => format!("{head}X"),
            None => s.to_owned(),
        };
        match id_type {
            IdType::ResidentId => validate_resident_id(&value, today)?,
            IdType::HkMacaoPermit => validate_permit(&value, &["810000", "820000"], today)?,
            IdType::TaiwanPermit => validate_permit(&value, &["830000"], today)?,
            IdType::ForeignPermanentResident => validate_foreign(&value, today)?,
        }
        Ok(Self { id_type, value })
    }

    /// The number in clear (upper-case `X`). Handle with care: personal data.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The document type.
    pub fn id_type(&self) -> IdType {
        self.id_type
    }

    /// The birth date embedded at characters 7..=14; `None` for foreign permanent
    /// resident IDs, which are not decoded.
    pub fn birth_date(&self) -> Option<NaiveDate> {
        match self.id_type {
            // The 2023 format (`9` + 17) carries it like a resident ID; the old
            // 15-character one is not decoded.
            IdType::ForeignPermanentResident if self.value.len() != 18 => None,
            _ => self.value.get(6..14).and_then(parse_yyyymmdd),
        }
    }

    /// The first 4 and last 4 characters, the rest as `*`: `3201**********123X`.
    pub fn masked(&self) -> String {
        mask(&self.value, 4, 4)
    }
}

impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdNumber({}, {})", self.id_type.as_str(), self.masked())
    }
}

impl fmt::Display for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

const RESIDENT_WEIGHTS: [usize; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const RESIDENT_CHECK_CHARS: &[u8; 11] = b"10X98765432";

/// The GB 11643-1999 check character for the first 17 digits of a resident ID;
/// `None` unless `first17` is exactly 17 ASCII digits.
pub fn resident_id_check_char(first17: &str) -> Option<char> {
    let digits = first17.as_bytes();
    if digits.len() != 17 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: usize = digits
        .iter()
        .zip(RESIDENT_WEIGHTS)
        .map(|(d, w)| usize::from(d - b'0') * w)
        .sum();
    Some(char::from(RESIDENT_CHECK_CHARS[sum % 11]))
}

fn validate_resident_id(s: &str, today: NaiveDate) -> Result<(), IdNumberError> {
    check_digits_layout(s)?;
    let province = s.get(..2).and_then(|p| p.parse::<u8>().ok());
    if !province.is_some_and(is_province_code) {
        return Err(IdNumberError::ProvincePrefix);
    }
    check_birth_date(s, today)?;
    if !resident_id_check_char(&s[..17]).is_some_and(|c| s.ends_with(c)) {
        return Err(IdNumberError::CheckCharacter);
    }
    Ok(())
}

fn validate_permit(s: &str, prefixes: &[&str], today: NaiveDate) -> Result<(), IdNumberError> {
    check_digits_layout(s)?;
    if !prefixes.iter().any(|p| s.starts_with(p)) {
        return Err(IdNumberError::Format);
    }
    check_birth_date(s, today)
}

/// New format (2023) `9` + 16 digits + digit/`X` with the birth date at characters
/// 7..=14, or old format 3 letters + 12 digits.
fn validate_foreign(s: &str, today: NaiveDate) -> Result<(), IdNumberError> {
    let b = s.as_bytes();
    match b.len() {
        18 => {
            check_digits_layout(s)?;
            if b[0] == b'9' {
                check_birth_date(s, today)
            } else {
                Err(IdNumberError::Format)
            }
        }
        15 if b[..3].iter().all(u8::is_ascii_uppercase)
            && b[3..].iter().all(u8::is_ascii_digit) =>
        {
            Ok(())
        }
        15 => Err(IdNumberError::Format),
        _ => Err(IdNumberError::Length),
    }
}

/// The layout shared by the 18-character numbers: 17 digits, then a digit or `X`.
/// `s` is ASCII.
fn check_digits_layout(s: &str) -> Result<(), IdNumberError> {
    let b = s.as_bytes();
    if b.len() != 18 {
        return Err(IdNumberError::Length);
    }
    if b[..17].iter().all(u8::is_ascii_digit) && (b[17].is_ascii_digit() || b[17] == b'X') {
        Ok(())
    } else {
        Err(IdNumberError::Characters)
    }
}

/// Province-level division codes of GB/T 2260 (first two digits of a resident ID).
fn is_province_code(code: u8) -> bool {
    matches!(code, 11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81 | 82)
}

/// Earliest plausible birth year (records.md, INVALID_ID_NUMBER).
pub const EARLIEST_BIRTH_YEAR: i32 = 1900;

/// The birth date at characters 7..=14 must be real, not after `today` and not before
/// [`EARLIEST_BIRTH_YEAR`].
fn check_birth_date(s: &str, today: NaiveDate) -> Result<(), IdNumberError> {
    let date = s
        .get(6..14)
        .and_then(parse_yyyymmdd)
        .ok_or(IdNumberError::BirthDate)?;
    if date > today {
        Err(IdNumberError::FutureBirthDate)
    } else if date.year() < EARLIEST_BIRTH_YEAR {
        Err(IdNumberError::BirthYearBefore1900)
    } else {
        Ok(())
    }
}

fn parse_yyyymmdd(s: &str) -> Option<NaiveDate> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year = s[..4].parse().ok()?;
    let month = s[4..6].parse().ok()?;
    let day = s[6..].parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

/// Masks a stored document number as [`IdNumber::masked`] does.
pub fn mask_id_number(s: &str) -> String {
    mask(s, 4, 4)
}

/// Masks a stored mobile number as [`Mobile::masked`] does.
pub fn mask_mobile(s: &str) -> String {
    mask(s, 3, 4)
}

/// Keeps the first `head` and last `tail` characters and replaces the others with
/// `*`, one per character; a string of at most `head + tail` characters is masked
/// entirely.
fn mask(s: &str, head: usize, tail: usize) -> String {
    let n = s.chars().count();
    if n <= head + tail {
        return "*".repeat(n);
    }
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < head || i >= n - tail { c } else { '*' })
        .collect()
}

/// Why a unified social credit code was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreditCodeError {
    /// Not exactly 18 characters.
    #[error("credit code must be 18 characters")]
    Length,
    /// A character outside `0-9` and upper-case `A-Y` without `I O S V Z`.
    #[error("credit code contains invalid characters")]
    Characters,
    /// The check character does not match the first 17 characters.
    #[error("credit code check character does not match")]
    CheckCharacter,
}

/// A validated unified social credit code (GB 32100-2015). Not personal data:
/// `Debug` and `Display` show it in full.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreditCode(String);

const CREDIT_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const CREDIT_WEIGHTS: [usize; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

fn credit_value(c: u8) -> Option<usize> {
    CREDIT_ALPHABET.iter().position(|&a| a == c)
}

/// The GB 32100-2015 check character for the first 17 characters of a credit code;
/// `None` unless `first17` is exactly 17 characters of the code alphabet.
pub fn credit_code_check_char(first17: &str) -> Option<char> {
    let chars = first17.as_bytes();
    if chars.len() != 17 {
        return None;
    }
    let sum = chars
        .iter()
        .zip(CREDIT_WEIGHTS)
        .try_fold(0, |acc, (&c, w)| Some(acc + credit_value(c)? * w))?;
    Some(char::from(CREDIT_ALPHABET[(31 - sum % 31) % 31]))
}

impl CreditCode {
    /// Validates an 18-character code; letters must be upper-case.
    pub fn parse(s: &str) -> Result<Self, CreditCodeError> {
        if !s.bytes().all(|b| credit_value(b).is_some()) {
            return Err(CreditCodeError::Characters);
        }
        if s.len() != 18 {
            return Err(CreditCodeError::Length);
        }
        if !credit_code_check_char(&s[..17]).is_some_and(|c| s.ends_with(c)) {
            return Err(CreditCodeError::CheckCharacter);
        }
        Ok(Self(s.to_owned()))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The six-digit administrative division code at characters 3..=8.
    pub fn division_code(&self) -> &str {
        &self.0[2..8]
    }
}

impl fmt::Display for CreditCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a mainland mobile number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid mobile number")]
pub struct InvalidMobile;

/// A validated mainland mobile number (`1[3-9]` + 9 digits). `Debug` and `Display`
/// are masked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mobile(String);

impl Mobile {
    /// Validates an 11-digit number starting `13`..`19`.
    pub fn parse(s: &str) -> Result<Self, InvalidMobile> {
        match s.as_bytes() {
            [b'1', b'3'..=b'9', rest @ ..]
                if rest.len() == 9 && rest.iter().all(u8::is_ascii_digit) =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(InvalidMobile),
        }
    }

    /// The number in clear. Handle with care: personal data.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 3 and last 4 digits: `138****8000`.
    pub fn masked(&self) -> String {
        mask(&self.0, 3, 4)
    }
}

impl fmt::Debug for Mobile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mobile({})", self.masked())
    }
}

impl fmt::Display for Mobile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masks a person's name: the first character, then one `*` per remaining character
/// (`张三丰` → `张**`); a one-character name is fully masked (`A` → `*`).
pub fn mask_name(name: &str) -> String {
    mask(name, 1, 0)
}

/// Longest accepted name, in characters.
const NAME_MAX_CHARS: usize = 50;

/// Why a person name was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or only whitespace.
    #[error("name is empty")]
    Empty,
    /// More than 50 characters after trimming.
    #[error("name is longer than 50 characters")]
    TooLong,
    /// Contains a control character.
    #[error("name contains a control character")]
    ControlCharacter,
    /// Contains an invisible formatting character (zero-width space or joiner,
    /// direction mark, soft hyphen, byte-order mark): two names that look the same
    /// would differ.
    #[error("name contains an invisible formatting character")]
    InvisibleCharacter,
}

/// Whether `s` holds an invisible formatting character (see [`NameError`]).
pub fn has_invisible(s: &str) -> bool {
    s.chars().any(is_invisible)
}

/// Invisible formatting characters (Unicode category Cf) that may hide in copied text.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A person's name, trimmed. `Debug` and `Display` are masked (see [`mask_name`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PersonName(String);

impl PersonName {
    /// Trims `s` and checks it is non-empty, at most 50 characters and free of
    /// control characters.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let name = s.trim();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.chars().count() > NAME_MAX_CHARS {
            return Err(NameError::TooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if name.chars().any(is_invisible) {
            return Err(NameError::InvisibleCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name in clear. Handle with care: personal data.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The masked name, as [`mask_name`].
    pub fn masked(&self) -> String {
        mask_name(&self.0)
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonName({})", self.masked())
    }
}

impl fmt::Display for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// A string that is not a valid vehicle plate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid vehicle plate")]
pub struct InvalidPlate;

/// A validated motor vehicle plate (GA 36-2018), ordinary or new-energy. Not personal
/// data: `Debug` and `Display` show it in full.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Plate(String);

const PLATE_PROVINCES: &str = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新";
const PLATE_SUFFIXES: &str = "挂学警港澳";

impl Plate {
    /// Validates an ordinary 7-character plate or a new-energy 8-character plate.
    pub fn parse(s: &str) -> Result<Self, InvalidPlate> {
        if is_valid_plate(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidPlate)
        }
    }

    /// The plate.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Plate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `A-Z` without `I` and `O`.
fn is_plate_letter(c: char) -> bool {
    c.is_ascii_uppercase() && c != 'I' && c != 'O'
}

fn is_plate_alnum(c: char) -> bool {
    is_plate_letter(c) || c.is_ascii_digit()
}

/// The new-energy class letters `A-H`, `J`, `K`.
fn is_energy_class(c: char) -> bool {
    matches!(c, 'A'..='H' | 'J' | 'K')
}

fn is_valid_plate(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let [province, authority, rest @ ..] = chars.as_slice() else {
        return false;
    };
    if !PLATE_PROVINCES.contains(*province) || !is_plate_letter(*authority) {
        return false;
    }
    let all_digits = |cs: &[char]| cs.iter().all(char::is_ascii_digit);
    match rest {
        [body @ .., last] if body.len() == 4 => {
            body.iter().all(|&c| is_plate_alnum(c))
                && (is_plate_alnum(*last) || PLATE_SUFFIXES.contains(*last))
        }
        [class, second, tail @ ..]
            if tail.len() == 4
                && is_energy_class(*class)
                && is_plate_alnum(*second)
                && all_digits(tail) =>
        {
            true
        }
        [digits @ .., class] if digits.len() == 5 => all_digits(digits) && is_energy_class(*class),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID_ID: &str = "11010519491231002X";

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 6, 1).unwrap_or_default()
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
    }

    /// Appends the resident-ID check character to 17 digits.
    fn with_resident_check(first17: &str) -> String {
        let check = resident_id_check_char(first17).unwrap_or('?');
        format!("{first17}{check}")
    }

    fn with_credit_check(first17: &str) -> String {
        let check = credit_code_check_char(first17).unwrap_or('?');
        format!("{first17}{check}")
    }

    fn resident(s: &str) -> Result<IdNumber, IdNumberError> {
        IdNumber::parse(IdType::ResidentId, s, today())
    }

    // ---- IdType ----

    #[test]
    fn id_type_round_trips_codes() {
        for t in [
            IdType::ResidentId,
            IdType::HkMacaoPermit,
            IdType::TaiwanPermit,
            IdType::ForeignPermanentResident,
        ] {
            assert_eq!(IdType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn id_type_rejects_unknown_and_empty() {
        assert_eq!(IdType::parse(""), None);
        assert_eq!(IdType::parse("resident_id"), None);
        assert_eq!(IdType::parse("PASSPORT"), None);
    }

    // ---- resident ID ----

    #[test]
    fn resident_check_char_matches_standard_example() {
        assert_eq!(resident_id_check_char("11010519491231002"), Some('X'));
        assert_eq!(resident_id_check_char("1101051949123100"), None);
        assert_eq!(resident_id_check_char("110105194912310021"), None);
        assert_eq!(resident_id_check_char("1101051949123100A"), None);
        assert_eq!(resident_id_check_char("１1010519491231002"), None);
    }

    #[test]
    fn resident_id_valid() {
        let id = resident(VALID_ID).expect("valid");
        assert_eq!(id.as_str(), VALID_ID);
        assert_eq!(id.id_type(), IdType::ResidentId);
        assert_eq!(id.birth_date(), Some(date(1949, 12, 31)));
    }

    #[test]
    fn resident_id_lower_case_x_is_normalised() {
        let id = resident("11010519491231002x").expect("valid");
        assert_eq!(id.as_str(), VALID_ID);
    }

    #[test]
    fn resident_id_length() {
        assert_eq!(resident(""), Err(IdNumberError::Length));
        assert_eq!(resident(&VALID_ID[..17]), Err(IdNumberError::Length));
        assert_eq!(
            resident(&format!("{VALID_ID}0")),
            Err(IdNumberError::Length)
        );
        assert_eq!(resident("110105491231002"), Err(IdNumberError::Length));
    }

    #[test]
    fn resident_id_characters() {
        assert_eq!(
            resident("１１０１０５１９４９１２３１００２X"),
            Err(IdNumberError::Characters)
        );
        assert_eq!(
            resident("11010519491231002Ｘ"),
            Err(IdNumberError::Characters)
        );
        assert_eq!(
            resident("1101051949123100XX"),
            Err(IdNumberError::Characters)
        );
        assert_eq!(
            resident("11010519491231002Y"),
            Err(IdNumberError::Characters)
        );
        assert_eq!(
            resident(" 1010519491231002X"),
            Err(IdNumberError::Characters)
        );
    }

    #[test]
    fn resident_id_check_character() {
        assert_eq!(
            resident("110105194912310021"),
            Err(IdNumberError::CheckCharacter)
        );
        assert_eq!(
            resident("11010519491231003X"),
            Err(IdNumberError::CheckCharacter)
        );
    }

    #[test]
    fn resident_id_birth_date() {
        assert_eq!(
            resident(&with_resident_check("11010519490230002")),
            Err(IdNumberError::BirthDate)
        );
        assert_eq!(
            resident(&with_resident_check("11010519491301002")),
            Err(IdNumberError::BirthDate)
        );
        assert_eq!(
            resident(&with_resident_check("11010519490000002")),
            Err(IdNumberError::BirthDate)
        );
        assert_eq!(
            resident(&with_resident_check("11010519010229002")),
            Err(IdNumberError::BirthDate)
        );
        assert!(resident(&with_resident_check("11010520000229002")).is_ok());
    }

    #[test]
    fn resident_id_birth_year_before_1900() {
        for first17 in [
            "11010500010101002",
            "11010518991231002",
            "11010510000101002",
        ] {
            assert_eq!(
                resident(&with_resident_check(first17)),
                Err(IdNumberError::BirthYearBefore1900),
                "{first17}"
            );
        }
        assert!(resident(&with_resident_check("11010519000101002")).is_ok());
        let permit = with_resident_check("81000018991231002");
        assert_eq!(
            IdNumber::parse(IdType::HkMacaoPermit, &permit, today()),
            Err(IdNumberError::BirthYearBefore1900)
        );
    }

    #[test]
    fn names_refuse_invisible_characters() {
        assert!(PersonName::parse("张三").is_ok());
        for bad in ["张\u{200B}三", "\u{FEFF}张三", "张三\u{202E}", "A\u{00AD}B"] {
            assert_eq!(
                PersonName::parse(bad),
                Err(NameError::InvisibleCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn resident_id_future_birth_date() {
        assert_eq!(
            resident(&with_resident_check("11010520250602002")),
            Err(IdNumberError::FutureBirthDate)
        );
        assert!(
            resident(&with_resident_check("11010520250601002")).is_ok(),
            "today is allowed"
        );
    }

    #[test]
    fn resident_id_province_prefix() {
        for prefix in [
            "00", "10", "16", "20", "24", "30", "38", "40", "47", "49", "55", "60", "66", "70",
            "72", "80", "83", "90", "99",
        ] {
            let id = with_resident_check(&format!("{prefix}010519491231002"));
            assert_eq!(
                resident(&id),
                Err(IdNumberError::ProvincePrefix),
                "{prefix}"
            );
        }
        for prefix in [
            "11", "15", "21", "23", "31", "37", "41", "46", "50", "54", "61", "65", "71", "81",
            "82",
        ] {
            let id = with_resident_check(&format!("{prefix}010519491231002"));
            assert!(resident(&id).is_ok(), "{prefix}");
        }
    }

    // ---- permits ----

    #[test]
    fn hk_macao_permit() {
        let parse = |s: &str| IdNumber::parse(IdType::HkMacaoPermit, s, today());
        let id = parse("810000199001011234").expect("valid");
        assert_eq!(id.birth_date(), Some(date(1990, 1, 1)));
        assert_eq!(id.id_type(), IdType::HkMacaoPermit);
        assert_eq!(
            parse("82000019900101123x").map(|id| id.as_str().to_owned()),
            Ok("82000019900101123X".to_owned())
        );
        assert_eq!(parse("830000199001011234"), Err(IdNumberError::Format));
        assert_eq!(parse("811000199001011234"), Err(IdNumberError::Format));
        assert_eq!(parse("81000019900101123"), Err(IdNumberError::Length));
        assert_eq!(parse("81000019900101123A"), Err(IdNumberError::Characters));
        assert_eq!(parse("810000199002301234"), Err(IdNumberError::BirthDate));
        assert_eq!(
            parse("810000203001011234"),
            Err(IdNumberError::FutureBirthDate)
        );
    }

    #[test]
    fn taiwan_permit() {
        let parse = |s: &str| IdNumber::parse(IdType::TaiwanPermit, s, today());
        let id = parse("83000019851231000X").expect("valid");
        assert_eq!(id.birth_date(), Some(date(1985, 12, 31)));
        assert_eq!(parse("810000198512310001"), Err(IdNumberError::Format));
        assert_eq!(parse("830000198513310001"), Err(IdNumberError::BirthDate));
        assert_eq!(
            parse("830000209912310001"),
            Err(IdNumberError::FutureBirthDate)
        );
        assert_eq!(parse("８30000198512310001"), Err(IdNumberError::Characters));
    }

    #[test]
    fn foreign_permanent_resident() {
        let parse = |s: &str| IdNumber::parse(IdType::ForeignPermanentResident, s, today());
        let new = parse("93311619900101001x").expect("new format");
        assert_eq!(new.as_str(), "93311619900101001X");
        assert_eq!(new.birth_date(), Some(date(1990, 1, 1)));
        assert_eq!(
            parse("93115618000101001X"),
            Err(IdNumberError::BirthYearBefore1900)
        );
        assert_eq!(
            parse("931156209901010011"),
            Err(IdNumberError::FutureBirthDate)
        );
        assert_eq!(parse("931156199002300011"), Err(IdNumberError::BirthDate));
        assert!(parse("USA330000900101").is_ok(), "old format");
        assert_eq!(
            parse("USA330000900101").ok().and_then(|i| i.birth_date()),
            None
        );
        assert_eq!(parse("833116199001010010"), Err(IdNumberError::Format));
        assert_eq!(parse("usa330000900101"), Err(IdNumberError::Format));
        assert_eq!(parse("US1330000900101"), Err(IdNumberError::Format));
        assert_eq!(parse("USA33000090010X"), Err(IdNumberError::Format));
        assert_eq!(parse("9331161990010100A1"), Err(IdNumberError::Characters));
        assert_eq!(parse("USA3300009001012"), Err(IdNumberError::Length));
        assert_eq!(parse("ＵSA330000900101"), Err(IdNumberError::Characters));
    }

    #[test]
    fn id_errors_never_contain_digits_or_x() {
        for e in [
            IdNumberError::Length,
            IdNumberError::Characters,
            IdNumberError::CheckCharacter,
            IdNumberError::BirthDate,
            IdNumberError::FutureBirthDate,
            IdNumberError::ProvincePrefix,
            IdNumberError::Format,
        ] {
            let msg = e.to_string();
            assert!(
                !msg.chars().any(|c| c.is_ascii_digit() || c == 'X'),
                "{msg}"
            );
        }
    }

    // ---- masking ----

    #[test]
    fn id_number_is_masked_in_debug_and_display() {
        let id = resident(VALID_ID).expect("valid");
        assert_eq!(id.masked(), "1101**********002X");
        assert_eq!(
            format!("{id:?}"),
            "IdNumber(RESIDENT_ID, 1101**********002X)"
        );
        assert_eq!(id.to_string(), "1101**********002X");
        let old = IdNumber::parse(IdType::ForeignPermanentResident, "USA330000900101", today())
            .expect("valid");
        assert_eq!(old.masked(), "USA3*******0101");
    }

    #[test]
    fn mask_keeps_head_and_tail() {
        assert_eq!(mask("12345678", 4, 4), "********");
        assert_eq!(mask("123456789", 4, 4), "1234*6789");
        assert_eq!(mask("", 4, 4), "");
    }

    #[test]
    fn mask_name_cases() {
        assert_eq!(mask_name("张三丰"), "张**");
        assert_eq!(mask_name("李四"), "李*");
        assert_eq!(mask_name("A"), "*");
        assert_eq!(mask_name(""), "");
        assert_eq!(mask_name("Ann Lee"), "A******");
    }

    // ---- person name ----

    #[test]
    fn person_name_valid_is_trimmed_and_masked() {
        let name = PersonName::parse("  张三丰 ").expect("valid");
        assert_eq!(name.as_str(), "张三丰");
        assert_eq!(name.masked(), "张**");
        assert_eq!(format!("{name:?}"), "PersonName(张**)");
        assert_eq!(name.to_string(), "张**");
    }

    #[test]
    fn person_name_errors() {
        assert_eq!(PersonName::parse(""), Err(NameError::Empty));
        assert_eq!(PersonName::parse(" \t\n "), Err(NameError::Empty));
        assert!(
            PersonName::parse(&"张".repeat(50)).is_ok(),
            "50 chars (150 bytes) is fine"
        );
        assert_eq!(PersonName::parse(&"张".repeat(51)), Err(NameError::TooLong));
        assert_eq!(
            PersonName::parse("张\n三"),
            Err(NameError::ControlCharacter)
        );
        assert_eq!(
            PersonName::parse("张\u{7}三"),
            Err(NameError::ControlCharacter)
        );
    }

    // ---- mobile ----

    #[test]
    fn mobile_valid_and_masked() {
        let m = Mobile::parse("13800138000").expect("valid");
        assert_eq!(m.as_str(), "13800138000");
        assert_eq!(m.masked(), "138****8000");
        assert_eq!(format!("{m:?}"), "Mobile(138****8000)");
        assert_eq!(m.to_string(), "138****8000");
        assert!(Mobile::parse("19912345678").is_ok());
    }

    #[test]
    fn mobile_invalid() {
        for s in [
            "",
            "12800138000",
            "10800138000",
            "23800138000",
            "1380013800",
            "138001380000",
            "1380013800a",
            "+8613800138000",
            "１3800138000",
        ] {
            assert_eq!(Mobile::parse(s), Err(InvalidMobile), "{s}");
        }
    }

    // ---- credit code ----

    #[test]
    fn credit_code_valid() {
        for s in [
            "91350100M000100Y43",
            "9144030071526726XG",
            "914403001922038216",
        ] {
            let code = CreditCode::parse(s).expect(s);
            assert_eq!(code.as_str(), s);
        }
        let code = CreditCode::parse("91350100M000100Y43").expect("valid");
        assert_eq!(code.division_code(), "350100");
        assert_eq!(format!("{code:?}"), "CreditCode(\"91350100M000100Y43\")");
        assert_eq!(code.to_string(), "91350100M000100Y43");
    }

    #[test]
    fn credit_code_check_char_cases() {
        assert_eq!(credit_code_check_char("91350100M000100Y4"), Some('3'));
        assert_eq!(credit_code_check_char("91350100M000100Y"), None);
        assert_eq!(credit_code_check_char("91350100I000100Y4"), None);
        assert_eq!(credit_code_check_char("91350100m000100Y4"), None);
        // sum ≡ 0 (mod 31) gives check value 31 → 0.
        assert_eq!(credit_code_check_char("00000000000000000"), Some('0'));
    }

    #[test]
    fn credit_code_errors() {
        assert_eq!(CreditCode::parse(""), Err(CreditCodeError::Length));
        assert_eq!(
            CreditCode::parse("91350100M000100Y4"),
            Err(CreditCodeError::Length)
        );
        assert_eq!(
            CreditCode::parse("91350100M000100Y430"),
            Err(CreditCodeError::Length)
        );
        assert_eq!(
            CreditCode::parse("91350100m000100y43"),
            Err(CreditCodeError::Characters)
        );
        for bad in ['I', 'O', 'S', 'V', 'Z', '-', '９'] {
            let s = format!("91350100{bad}000100Y43");
            assert_eq!(
                CreditCode::parse(&s),
                Err(CreditCodeError::Characters),
                "{s}"
            );
        }
        assert_eq!(
            CreditCode::parse("91350100M000100Y44"),
            Err(CreditCodeError::CheckCharacter)
        );
    }

    // ---- plates ----

    #[test]
    fn plates_valid() {
        for s in [
            "京A12345",
            "粤BD1234",
            "沪AF0000",
            "新A1234挂",
            "鲁B1234学",
            "粤Z1234港",
            "粤Z1234澳",
            "京A0001警",
            "京AD12345",
            "京A12345D",
            "苏EFA1234",
            "浙AK01234",
            "川A12345K",
        ] {
            let plate = Plate::parse(s).expect(s);
            assert_eq!(plate.as_str(), s);
            assert_eq!(plate.to_string(), s);
        }
        assert_eq!(
            format!("{:?}", Plate::parse("京A12345")),
            "Ok(Plate(\"京A12345\"))"
        );
    }

    #[test]
    fn plates_invalid() {
        for s in [
            "",
            "京",
            "京A1234",
            "京A123456",
            "京I12345",
            "京O12345",
            "京a12345",
            "京A1234O",
            "京A1234I",
            "港A12345",
            "A京12345",
            "京112345",
            "京A12345挂",
            "京A1234使",
            "京AL12345",
            "京A12345L",
            "京AD1234A",
            "京AD1A234",
            "京A1234D5",
            "京A123456D",
            "京Ａ12345",
            "京A12345 ",
        ] {
            assert_eq!(Plate::parse(s), Err(InvalidPlate), "{s}");
        }
    }

    // ---- properties ----

    const ID_ALPHABET: &[u8; 11] = b"0123456789X";

    fn province_prefix() -> impl Strategy<Value = u8> {
        let codes: Vec<u8> = (10..100).filter(|&c| is_province_code(c)).collect();
        prop::sample::select(codes)
    }

    fn birth_date_1930_2008() -> impl Strategy<Value = NaiveDate> {
        let start = date(1930, 1, 1);
        let days = (date(2008, 12, 31) - start).num_days();
        (0..=days).prop_map(move |d| start + chrono::Duration::days(d))
    }

    fn valid_resident_id() -> impl Strategy<Value = String> {
        (
            province_prefix(),
            0..10_000u32,
            birth_date_1930_2008(),
            0..1_000u32,
        )
            .prop_map(|(p, area, birth, seq)| {
                with_resident_check(&format!(
                    "{p:02}{area:04}{}{seq:03}",
                    birth.format("%Y%m%d")
                ))
            })
    }

    fn valid_credit_code() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(CREDIT_ALPHABET.to_vec()), 17)
            .prop_map(|body| with_credit_check(&String::from_utf8_lossy(&body)))
    }

    /// Replaces the byte at `pos` with a *different* member of `alphabet`, chosen by `k`
    /// (0 ≤ k < alphabet.len() − 1).
    fn mutate(s: &str, alphabet: &[u8], pos: usize, k: usize) -> String {
        let mut bytes = s.as_bytes().to_vec();
        let current = alphabet.iter().position(|&a| a == bytes[pos]).unwrap_or(0);
        bytes[pos] = alphabet[(current + 1 + k) % alphabet.len()];
        String::from_utf8_lossy(&bytes).into_owned()
    }

    proptest! {
        #[test]
        fn generated_resident_ids_pass(id in valid_resident_id()) {
            let parsed = resident(&id);
            prop_assert!(parsed.is_ok(), "{:?}", parsed);
            let parsed = parsed.unwrap_or_else(|_| unreachable!());
            prop_assert_eq!(parsed.birth_date(), parse_yyyymmdd(&id[6..14]));
            let (debug, display) = (format!("{parsed:?}"), parsed.to_string());
            prop_assert!(!debug.contains(&id[4..14]) && !display.contains(&id[4..14]));
        }

        #[test]
        fn resident_id_single_char_change_fails(id in valid_resident_id(), pos in 0..18usize, k in 0..10usize) {
            let mutated = mutate(&id, ID_ALPHABET, pos, k);
            prop_assert_ne!(&mutated, &id);
            prop_assert!(resident(&mutated).is_err(), "{} accepted", mutated);
        }

        #[test]
        fn generated_credit_codes_pass(code in valid_credit_code()) {
            let parsed = CreditCode::parse(&code);
            prop_assert!(parsed.is_ok(), "{:?}", parsed);
        }

        #[test]
        fn credit_code_single_char_change_fails(code in valid_credit_code(), pos in 0..18usize, k in 0..30usize) {
            let mutated = mutate(&code, CREDIT_ALPHABET, pos, k);
            prop_assert_ne!(&mutated, &code);
            prop_assert_eq!(CreditCode::parse(&mutated), Err(CreditCodeError::CheckCharacter));
        }

        #[test]
        fn generated_mobiles_pass(second in 3..=9u8, rest in 0..1_000_000_000u64) {
            let s = format!("1{second}{rest:09}");
            let m = Mobile::parse(&s);
            prop_assert!(m.is_ok(), "{:?}", m);
            let masked = m.map(|m| m.masked()).unwrap_or_default();
            prop_assert_eq!(masked, format!("{}****{}", &s[..3], &s[7..]));
        }

        #[test]
        fn mask_name_keeps_char_count(name in "\\PC{0,20}") {
            let masked = mask_name(&name);
            prop_assert_eq!(masked.chars().count(), name.chars().count());
            prop_assert_eq!(masked.chars().filter(|&c| c != '*').count(), usize::from(name.chars().count() > 1 && !name.starts_with('*')));
        }
    }
}
