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
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::FromDatum;

use crate::container::Root;
use crate::envelope::{EncodedParts, EnvelopeError, Sealed};
use crate::stored;

// The pure layout reader's constants are Postgres' own, checked at compile time.
const _: () = {
    use crate::container as c;
    assert!(c::JB_CMASK == pg_sys::JB_CMASK);
    assert!(c::JB_FSCALAR == pg_sys::JB_FSCALAR);
    assert!(c::JB_FOBJECT == pg_sys::JB_FOBJECT);
    assert!(c::JB_FARRAY == pg_sys::JB_FARRAY);
    assert!(c::JENTRY_OFFLENMASK == pg_sys::JENTRY_OFFLENMASK);
    assert!(c::JENTRY_TYPEMASK == pg_sys::JENTRY_TYPEMASK);
    assert!(c::JENTRY_HAS_OFF == pg_sys::JENTRY_HAS_OFF);
    assert!(c::JENTRY_ISSTRING == pg_sys::JENTRY_ISSTRING);
    assert!(c::JENTRY_ISNUMERIC == pg_sys::JENTRY_ISNUMERIC);
    assert!(c::JENTRY_ISBOOL_FALSE == pg_sys::JENTRY_ISBOOL_FALSE);
    assert!(c::JENTRY_ISBOOL_TRUE == pg_sys::JENTRY_ISBOOL_TRUE);
    assert!(c::JENTRY_ISNULL == pg_sys::JENTRY_ISNULL);
    assert!(c::JENTRY_ISCONTAINER == pg_sys::JENTRY_ISCONTAINER);
    assert!(c::JB_OFFSET_STRIDE == pg_sys::JB_OFFSET_STRIDE as usize);
};

/// A `jsonb` argument or result, passed as the raw datum without any conversion. Never a
/// null datum: SQL NULL is `None` of an `Option<RawJsonb>` argument (see the `ArgAbi` impl).
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

// pgrx has no argument type that hands over a jsonb datum unconverted (its `JsonB` parses the
// whole value with serde), so this one is ours. It goes through `FromDatum` exactly as pgrx's
// own argument types do, so a NULL can only become `None`: never a null datum.
unsafe impl<'fcx> ArgAbi<'fcx> for RawJsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the argument is declared jsonb (SqlTranslatable below).
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| crate::error::Error::NullDatum(index).report())
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
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

    /// The root container's bytes: everything after the varlena header. They live in the
    /// current memory context for the rest of the function call.
    ///
    /// # Safety
    /// The datum must be a valid jsonb.
    unsafe fn container(&self) -> &[u8] {
        // SAFETY: a detoasted value has a 4-byte header and VARSIZE bytes in all.
        unsafe {
            let jsonb = self.detoasted().cast::<pg_sys::varlena>();
            let len = pgrx::varlena::varsize_4b(jsonb).saturating_sub(pg_sys::VARHDRSZ);
            std::slice::from_raw_parts(jsonb.cast::<u8>().add(pg_sys::VARHDRSZ), len)
        }
    }

    /// The value's bytes after its varlena header, as a RETURNING row shows it stored.
    ///
    /// # Safety
    /// The datum must be a valid jsonb.
    pub unsafe fn payload(&self) -> &[u8] {
        // SAFETY: forwarded to the caller.
        unsafe { self.container() }
    }

    /// The decoded envelope of a stored jsonb secret; `None` for `{}`.
    ///
    /// # Safety
    /// The datum must be a valid jsonb.
    pub unsafe fn sealed(&self) -> Result<Option<Sealed>, EnvelopeError> {
        // SAFETY: forwarded to the caller.
        stored::sealed(unsafe { self.container() })
    }

    /// The value's JSON text, as `jsonb_out` writes it, converted from the database encoding
    /// to UTF-8 exactly (`what` names it in the error otherwise).
    pub fn to_text(&self, what: &'static str) -> Result<String, crate::error::Error> {
        // SAFETY: jsonb_out takes one jsonb datum and returns a cstring.
        let text =
            unsafe { pgrx::direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(self.0)]) };
        let bytes = text.map(CStr::to_bytes).unwrap_or_default();
        Ok(crate::encoding::to_utf8(bytes, what)?.into_owned())
    }

    /// A copy of this envelope with its `iv`, `ciphertext` and `authTag` replaced and every
    /// other field kept as stored. The stored bytes are spliced directly when the object holds
    /// only strings, booleans and nulls (every envelope the application writes); otherwise the
    /// value is rebuilt by Postgres' own functions.
    ///
    /// # Safety
    /// The datum must be a valid jsonb object holding all three fields (the caller has
    /// decoded them from this very value).
    pub unsafe fn with_parts(&self, parts: &EncodedParts) -> RawJsonb {
        let replacements = parts.fields();
        // SAFETY: forwarded to the caller.
        let stored = unsafe { self.container() };
        if let Some(Root::Object(object)) = Root::parse(stored) {
            if let Some(len) = object.with_strings_len(&replacements) {
                // SAFETY: written in place into a new datum of exactly the right size, which
                // is only returned once every byte has been written.
                unsafe {
                    let (datum, container) = RawJsonb::allocate(len);
                    if object
                        .write_with_strings(&replacements, container)
                        .is_some()
                    {
                        return datum;
                    }
                }
            }
        }
        // SAFETY: forwarded to the caller.
        unsafe { self.rebuilt_with_parts(parts) }
    }

    /// A new jsonb datum of a container of `len` bytes, palloc'd (zeroed) in the current
    /// memory context, and its container bytes to fill in.
    ///
    /// # Safety
    /// The container must be filled with a valid jsonb container before the datum is used,
    /// and the slice must not be used after the memory context is reset (its lifetime is not
    /// tied to anything the compiler can see).
    unsafe fn allocate<'a>(len: usize) -> (RawJsonb, &'a mut [u8]) {
        let size = len + pg_sys::VARHDRSZ;
        // SAFETY: palloc0 raises an ERROR rather than return NULL; the slice is the datum's
        // bytes after its header, which live as long as the memory context.
        unsafe {
            let datum = pg_sys::palloc0(size).cast::<u8>();
            pgrx::varlena::set_varsize_4b(datum.cast(), size as i32);
            (
                RawJsonb(pg_sys::Datum::from(datum)),
                std::slice::from_raw_parts_mut(datum.add(pg_sys::VARHDRSZ), len),
            )
        }
    }

    /// `with_parts` through Postgres' iterator and serialiser: one pass over the binary
    /// container, as Postgres' own jsonb functions rebuild a value.
    ///
    /// # Safety
    /// As `with_parts`.
    pub unsafe fn rebuilt_with_parts(&self, parts: &EncodedParts) -> RawJsonb {
        use pg_sys::JsonbIteratorToken::{WJB_BEGIN_ARRAY, WJB_DONE, WJB_KEY, WJB_VALUE};
        let replacements = parts.fields();
        // SAFETY: a valid jsonb (caller); the iterator and the parse state live in the current
        // memory context; the replacement strings outlive JsonbValueToJsonb, which copies them.
        unsafe {
            let jsonb = self.detoasted();
            let mut it = pg_sys::JsonbIteratorInit(std::ptr::addr_of_mut!((*jsonb).root));
            let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
            let mut value: pg_sys::JsonbValue = std::mem::zeroed();
            let mut result: *mut pg_sys::JsonbValue = std::ptr::null_mut();
            let mut replacement: Option<&[u8]> = None;
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

/// Test support for the `#[pg_test]`s that hold the splice to Postgres' own serialiser.
#[cfg(any(test, feature = "pg_test"))]
impl RawJsonb {
    /// A jsonb datum parsed from JSON text by `jsonb_in`.
    pub fn from_text(text: &CStr) -> RawJsonb {
        // SAFETY: jsonb_in takes one cstring and returns a jsonb datum (or raises an ERROR).
        let datum = unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(text.as_ptr().into())])
        };
        RawJsonb(datum.unwrap_or(pg_sys::Datum::from(0)))
    }

    /// A new jsonb datum holding `container`, checked or not.
    ///
    /// # Safety
    /// Only for tests of how damaged values are handled: the bytes are not checked.
    pub unsafe fn from_container(container: &[u8]) -> RawJsonb {
        // SAFETY: filled right away (caller: with anything, on purpose).
        unsafe {
            let (datum, bytes) = RawJsonb::allocate(container.len());
            bytes.copy_from_slice(container);
            datum
        }
    }

    /// The root container's bytes, copied.
    pub fn container_bytes(&self) -> Vec<u8> {
        // SAFETY: test values are valid jsonb datums.
        unsafe { self.container() }.to_vec()
    }
}

fn string_value(s: &[u8]) -> pg_sys::JsonbValue {
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
