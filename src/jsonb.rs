//! Reading and writing envelope fields of a `jsonb` value in place.
//!
//! The generic path reads a secret as text (`jsonb_out`), parses it with serde, and writes
//! text back that Postgres parses again (`jsonb_in`): three conversions of the whole envelope
//! per row, most of the cost of a rotation. For `jsonb` columns the rotation instead looks up
//! the four fields it needs in the binary container, and writes back a copy of the container
//! in which only the three re-sealed fields differ: every other field stays exactly as stored.

use std::ffi::CStr;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::FromDatum;

use crate::envelope::{EncodedParts, EnvelopeError, Field, Sealed};

/// A `jsonb` argument or result, passed as the raw datum without any conversion.
pub struct RawJsonb(pg_sys::Datum);

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<RawJsonb> {
        (!is_null).then_some(RawJsonb(datum))
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for RawJsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: pgrx only calls this for a non-null argument of our declared type, jsonb.
        unsafe {
            RawJsonb(
                arg.unbox_arg_using_from_datum::<RawJsonb>()
                    .map_or(pg_sys::Datum::from(0), |r| r.0),
            )
        }
    }
}

unsafe impl BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: the datum is a palloc'd jsonb built in the current memory context.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

unsafe impl SqlTranslatable for RawJsonb {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(RawJsonb);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

/// The shape of a stored jsonb secret, as far as a rotation cares.
pub enum Shape<'a> {
    NotAnObject,
    EmptyObject,
    /// algorithm, iv, ciphertext, authTag
    Object([Field<'a>; 4]),
}

const FIELD_NAMES: [&CStr; 4] = [c"algorithm", c"iv", c"ciphertext", c"authTag"];

impl RawJsonb {
    /// The value as a `Jsonb` with a 4-byte header, as DatumGetJsonbP gives it. An envelope
    /// stored inline and uncompressed already is one; only other values pay for a detoast.
    ///
    /// # Safety
    /// The datum must be a valid jsonb.
    unsafe fn detoasted(&self) -> *mut pg_sys::Jsonb {
        let ptr = self.0.cast_mut_ptr::<pg_sys::varlena>();
        // SAFETY: a valid varlena (caller).
        unsafe {
            if pgrx::varlena::varatt_is_4b_u(ptr) {
                ptr.cast()
            } else {
                pg_sys::pg_detoast_datum(ptr).cast()
            }
        }
    }

    /// Looks up the envelope fields. Borrowed strings point into the detoasted value, which
    /// lives in the current memory context for the rest of the function call.
    ///
    /// # Safety
    /// The datum must be a valid jsonb.
    pub unsafe fn shape<'a>(&'a self) -> Shape<'a> {
        // SAFETY: a jsonb datum; pg_detoast_datum gives a 4-byte-header copy when needed, as
        // DatumGetJsonbP does.
        unsafe {
            let jsonb = self.detoasted();
            let root = std::ptr::addr_of_mut!((*jsonb).root);
            let header = (*root).header;
            if header & pg_sys::JB_FOBJECT == 0 {
                return Shape::NotAnObject;
            }
            if header & pg_sys::JB_CMASK == 0 {
                return Shape::EmptyObject;
            }
            let mut fields = [Field::Missing; 4];
            for (slot, name) in fields.iter_mut().zip(FIELD_NAMES) {
                let value = pg_sys::getKeyJsonValueFromContainer(
                    root,
                    name.as_ptr(),
                    name.to_bytes().len() as i32,
                    std::ptr::null_mut(),
                );
                *slot = if value.is_null() {
                    Field::Missing
                } else if (*value).type_ != pg_sys::jbvType::jbvString {
                    Field::NotAString
                } else {
                    let s = (*value).val.string;
                    let bytes = std::slice::from_raw_parts(s.val as *const u8, s.len as usize);
                    // jsonb strings are valid UTF-8 in a UTF-8 database; anything else cannot
                    // be base64 and is reported like a non-string.
                    match std::str::from_utf8(bytes) {
                        Ok(text) => Field::Str(text),
                        Err(_) => Field::NotAString,
                    }
                };
            }
            Shape::Object(fields)
        }
    }

    /// The decoded envelope of a stored jsonb secret; `None` for `{}`.
    ///
    /// # Safety
    /// The datum must be a valid jsonb.
    pub unsafe fn sealed(&self) -> Result<Option<Sealed>, EnvelopeError> {
        // SAFETY: forwarded to the caller.
        match unsafe { self.shape() } {
            Shape::NotAnObject => Err(EnvelopeError::NotAnObject),
            Shape::EmptyObject => Ok(None),
            Shape::Object([algorithm, iv, ciphertext, tag]) => {
                Sealed::decode(algorithm, iv, ciphertext, tag).map(Some)
            }
        }
    }

    /// The value's JSON text, as `jsonb_out` writes it.
    pub fn to_text(&self) -> String {
        // SAFETY: jsonb_out takes one jsonb datum and returns a cstring.
        let text =
            unsafe { pgrx::direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(self.0)]) };
        text.map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A copy of this envelope with its `iv`, `ciphertext` and `authTag` replaced and every
    /// other field kept as stored: one pass over the binary container, as Postgres' own jsonb
    /// functions rebuild a value.
    ///
    /// # Safety
    /// The datum must be a valid jsonb object holding all three fields (the caller has
    /// decoded them from this very value).
    pub unsafe fn with_parts(&self, parts: &EncodedParts) -> RawJsonb {
        use pg_sys::JsonbIteratorToken::{WJB_BEGIN_ARRAY, WJB_DONE, WJB_KEY, WJB_VALUE};
        let replacements: [(&[u8], &str); 3] = [
            (b"iv", &parts.iv),
            (b"ciphertext", &parts.ciphertext),
            (b"authTag", &parts.auth_tag),
        ];
        // SAFETY: a valid jsonb (caller); the iterator and the parse state live in the current
        // memory context; the replacement strings outlive JsonbValueToJsonb, which copies them.
        unsafe {
            let jsonb = self.detoasted();
            let mut it = pg_sys::JsonbIteratorInit(std::ptr::addr_of_mut!((*jsonb).root));
            let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
            let mut value: pg_sys::JsonbValue = std::mem::zeroed();
            let mut result: *mut pg_sys::JsonbValue = std::ptr::null_mut();
            let mut replacement: Option<&str> = None;
            loop {
                let token = pg_sys::JsonbIteratorNext(&mut it, &mut value, true);
                if token == WJB_DONE {
                    break;
                }
                if token == WJB_KEY {
                    let key = value.val.string;
                    let key = std::slice::from_raw_parts(key.val as *const u8, key.len as usize);
                    replacement = replacements
                        .iter()
                        .find(|(name, _)| *name == key)
                        .map(|(_, new)| *new);
                }
                result = match (token, replacement) {
                    (WJB_VALUE, Some(new)) => {
                        let mut new = string_value(new);
                        pg_sys::pushJsonbValue(&mut state, token, &mut new)
                    }
                    // Scalars, keys and (skipped) nested values carry a value; the container
                    // begin/end tokens do not.
                    (t, _) if t < WJB_BEGIN_ARRAY => {
                        pg_sys::pushJsonbValue(&mut state, t, &mut value)
                    }
                    (t, _) => pg_sys::pushJsonbValue(&mut state, t, std::ptr::null_mut()),
                };
            }
            RawJsonb(pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(result)))
        }
    }
}

fn string_value(s: &str) -> pg_sys::JsonbValue {
    pg_sys::JsonbValue {
        type_: pg_sys::jbvType::jbvString,
        val: pg_sys::JsonbValue__bindgen_ty_1 {
            string: pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
                len: s.len() as i32,
                val: s.as_ptr() as *mut std::ffi::c_char,
            },
        },
    }
}
