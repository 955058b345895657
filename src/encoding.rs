//! Text crossing between the database encoding and UTF-8.
//!
//! The application's plaintext is UTF-8 JSON, and the Rust side holds every string as UTF-8.
//! A database may use another encoding (LATIN1, WIN1252, EUC_JP, …): text arguments and SPI
//! results arrive in it, and text results, SQL text and SPI parameters must be in it. pgrx's
//! own `&str`/`String` conversions do not convert: they panic on non-ASCII bytes of a
//! non-UTF-8 database, and label UTF-8 results as the database encoding. Every text that can
//! carry non-ASCII crosses here instead, converted by Postgres' own conversion functions,
//! exactly or not at all: a character with no equivalent is refused, never substituted.
//!
//! SQL_ASCII is not an encoding but "bytes as they are": Postgres never converts to or from
//! it, and neither do we. Bytes pass unchanged both ways; where the Rust side needs UTF-8
//! (plaintext to seal, JSON to parse, names) they must already be valid UTF-8, or the call is
//! refused. For the application's UTF-8 JSON that is exact: the bytes a client reads are the
//! bytes the application sealed, and a SQL_ASCII client interprets them as it interprets any
//! other text of that database.

use std::borrow::Cow;
use std::ffi::CStr;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::{Datum, UnboxDatum};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::spi::{SpiHeapTupleData, SpiTupleTable};
use pgrx::{FromDatum, IntoDatum};

use crate::error::Error;

const UTF8: i32 = pg_sys::pg_enc::PG_UTF8 as i32;
const SQL_ASCII: i32 = pg_sys::pg_enc::PG_SQL_ASCII as i32;

fn database_encoding() -> i32 {
    // SAFETY: reads a backend-global set at connection start.
    unsafe { pg_sys::GetDatabaseEncoding() }
}

/// The database encoding's name, for messages.
pub fn database_encoding_name() -> &'static str {
    // SAFETY: a pointer to a static, NUL-terminated name in Postgres' encoding table.
    unsafe { CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) }
        .to_str()
        .unwrap_or("?")
}

/// Whether text can go between Rust and Postgres unconverted: the bytes mean the same on both
/// sides (UTF-8), or Postgres gives them no meaning (SQL_ASCII).
fn passes_through() -> bool {
    matches!(database_encoding(), UTF8 | SQL_ASCII)
}

/// `bytes` converted from encoding `from` to `to` with Postgres' default conversion; `None`
/// when a character has no equivalent, the input is invalid, or no conversion exists.
fn convert(bytes: &[u8], from: i32, to: i32) -> Option<Cow<'_, [u8]>> {
    // Every server encoding is a superset of ASCII: the common case costs one scan.
    if from == to || bytes.is_ascii() {
        return Some(Cow::Borrowed(bytes));
    }
    let len = i32::try_from(bytes.len()).ok()?;
    let capacity = bytes
        .len()
        .checked_mul(pg_sys::MAX_CONVERSION_GROWTH as usize)?
        .checked_add(1)?;
    let capacity_c = i32::try_from(capacity).ok()?;
    // SAFETY: a catalog lookup, inside the transaction of the calling function.
    let proc_ = unsafe { pg_sys::FindDefaultConversionProc(from, to) };
    if proc_ == pg_sys::InvalidOid {
        return None;
    }
    let mut out = vec![0u8; capacity];
    // SAFETY: the source is `len` readable bytes (the conversion does not write to it); the
    // destination has the MAX_CONVERSION_GROWTH * len + 1 bytes Postgres requires. With
    // noError the conversion stops at the first character it cannot convert and returns how
    // many source bytes it did convert, instead of raising an ERROR that would quote them.
    let converted = unsafe {
        pg_sys::pg_do_encoding_conversion_buf(
            proc_,
            from,
            to,
            bytes.as_ptr().cast_mut(),
            len,
            out.as_mut_ptr(),
            capacity_c,
            true,
        )
    };
    if converted != len {
        return None;
    }
    // The output is NUL-terminated; the input held no NUL (checked or impossible in text).
    let end = out.iter().position(|&b| b == 0)?;
    out.truncate(end);
    Some(Cow::Owned(out))
}

/// Text in the database encoding as UTF-8. `what` names it in the error (never its content).
pub fn to_utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<Cow<'a, str>, Error> {
    let db = database_encoding();
    let converted = if db == SQL_ASCII {
        Cow::Borrowed(bytes)
    } else {
        convert(bytes, db, UTF8).ok_or(Error::Untranslatable {
            what,
            from: database_encoding_name(),
            to: "UTF8",
        })?
    };
    match converted {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed),
        Cow::Owned(b) => String::from_utf8(b)
            .map(Cow::Owned)
            .map_err(|e| e.utf8_error()),
    }
    .map_err(|_| Error::NotUtf8(what))
}

/// UTF-8 text in the database encoding, refused when a character has no equivalent there.
pub fn from_utf8<'a>(text: &'a str, what: &'static str) -> Result<Cow<'a, [u8]>, Error> {
    // No text value can hold a NUL, in any encoding.
    if text.as_bytes().contains(&0) {
        return Err(Error::NulCharacter(what));
    }
    let db = database_encoding();
    if db == SQL_ASCII {
        return Ok(Cow::Borrowed(text.as_bytes()));
    }
    convert(text.as_bytes(), UTF8, db).ok_or(Error::Untranslatable {
        what,
        from: "UTF8",
        to: database_encoding_name(),
    })
}

/// SQL text built in Rust, as the C string SPI parses in the database encoding.
pub fn sql(text: &str) -> Result<std::ffi::CString, Error> {
    let bytes = from_utf8(text, "a statement")?;
    // ok: from_utf8 refused NUL and a conversion never produces one.
    std::ffi::CString::new(bytes.into_owned())
        .map_err(|_| Error::Internal("a statement holds a NUL byte".into()))
}

/// A message for the client: Postgres reads it in the database encoding. Non-ASCII characters
/// (from names) are written as `\uXXXX` escapes there unless the bytes mean the same (UTF-8)
/// or nothing (SQL_ASCII): exact, and never mislabelled.
pub fn message(text: String) -> String {
    if passes_through() || text.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A `text` argument or result in the database encoding, passed as the raw datum. Never a
/// null datum: SQL NULL is `None` of an `Option<DbText>` argument (see the `ArgAbi` impl).
#[derive(Clone)]
pub struct DbText(pg_sys::Datum);

impl DbText {
    /// The text's bytes, in the database encoding, valid for the rest of the function call.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: a valid text datum (it was declared text, or built by from_utf8); a packed
        // or toasted value is expanded into the current memory context.
        unsafe {
            let varlena = pg_sys::pg_detoast_datum_packed(self.0.cast_mut_ptr());
            let len = pgrx::varlena::varsize_any_exhdr(varlena);
            let data = pgrx::varlena::vardata_any(varlena);
            std::slice::from_raw_parts(data.cast::<u8>(), len)
        }
    }

    /// The text as UTF-8; `what` names it in an error.
    pub fn to_utf8(&self, what: &'static str) -> Result<Cow<'_, str>, Error> {
        to_utf8(self.bytes(), what)
    }

    /// A new text datum holding `text` in the database encoding.
    pub fn from_utf8(text: &str, what: &'static str) -> Result<DbText, Error> {
        let bytes = from_utf8(text, what)?;
        let len = i32::try_from(bytes.len())
            .map_err(|_| Error::Envelope(crate::envelope::EnvelopeError::TooLarge))?;
        // SAFETY: copies `len` readable bytes into a new palloc'd text (ERROR past 1 GB).
        let text = unsafe { pg_sys::cstring_to_text_with_len(bytes.as_ptr().cast(), len) };
        Ok(DbText(pg_sys::Datum::from(text)))
    }
}

impl FromDatum for DbText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<DbText> {
        (!is_null).then_some(DbText(datum))
    }
}

impl IntoDatum for DbText {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::TEXTOID
    }
}

// pgrx's text arguments (`&str`, `String`) do not convert from the database encoding, and it
// has no other type that hands over a text datum as it is, so this one is ours. It goes
// through `FromDatum` exactly as pgrx's own argument types do, so a NULL can only become
// `None`: never a null datum.
unsafe impl<'fcx> ArgAbi<'fcx> for DbText {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the argument is declared text (SqlTranslatable below).
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| Error::NullDatum(index).report())
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// Lets `Array<DbText>` hand over `text[]` elements as they are stored: pgrx's own `&str`
// elements are not checked for UTF-8 at all, which in a non-UTF-8 database would make a
// `&str` of invalid UTF-8.
unsafe impl UnboxDatum for DbText {
    type As<'src> = DbText;
    unsafe fn unbox<'src>(datum: Datum<'src>) -> DbText
    where
        Self: 'src,
    {
        DbText(datum.sans_lifetime())
    }
}

unsafe impl BoxRet for DbText {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: the datum is a palloc'd text built in the current memory context.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

unsafe impl SqlTranslatable for DbText {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(DbText);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("text"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("text")));
}

/// A text column of an SPI result, converted to UTF-8 while the SPI memory still holds it.
struct SpiText(Result<String, Error>);

impl FromDatum for SpiText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<SpiText> {
        (!is_null).then(|| {
            SpiText(
                DbText(datum)
                    .to_utf8("a name or key value")
                    .map(Cow::into_owned),
            )
        })
    }
}

impl IntoDatum for SpiText {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let text = self.0.ok()?;
        DbText::from_utf8(&text, "a name or key value")
            .ok()
            .map(|t| t.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::TEXTOID
    }
}

/// Reading a text column of an SPI result as UTF-8, in any database encoding.
pub trait GetText {
    fn get_text(&self, ordinal: usize) -> Result<Option<String>, Error>;
}

impl GetText for SpiTupleTable<'_> {
    fn get_text(&self, ordinal: usize) -> Result<Option<String>, Error> {
        self.get::<SpiText>(ordinal)?.map(|t| t.0).transpose()
    }
}

impl GetText for SpiHeapTupleData<'_> {
    fn get_text(&self, ordinal: usize) -> Result<Option<String>, Error> {
        self.get::<SpiText>(ordinal)?.map(|t| t.0).transpose()
    }
}

/// A UTF-8 string as a text SPI parameter in the database encoding.
pub fn param(text: &str) -> Result<pgrx::datum::DatumWithOid<'static>, Error> {
    Ok(DbText::from_utf8(text, "a name")?.into())
}
