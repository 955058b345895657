//! A stored jsonb container read as an envelope: which of the four fields a rotation needs it
//! holds, and of what kind. One mapping for the extension's jsonb path and the fuzz targets, so
//! that what is fuzzed is what runs.

use crate::container::{Object, Root, Value};
use crate::envelope::format::DECODED_FIELDS;
use crate::envelope::{EnvelopeError, Field, Sealed};

/// The shape of a stored jsonb secret, as far as a rotation cares.
pub enum Shape<'a> {
    NotAnObject,
    EmptyObject,
    /// algorithm, iv, ciphertext, authTag
    Object([Field<'a>; 4]),
}

/// The fields [`Sealed::decode`] reads, as the container's keys.
pub const FIELD_NAMES: [&[u8]; 4] = {
    let [algorithm, iv, ciphertext, tag] = DECODED_FIELDS;
    [
        algorithm.as_bytes(),
        iv.as_bytes(),
        ciphertext.as_bytes(),
        tag.as_bytes(),
    ]
};

/// An object's envelope fields, in [`Sealed::decode`]'s argument order.
pub fn envelope_fields<'a>(object: &Object<'a>) -> [Field<'a>; 4] {
    object.get(FIELD_NAMES).map(|value| match value {
        None => Field::Missing,
        Some(Value::Other) => Field::NotAString,
        Some(Value::String(bytes)) => Field::Str(bytes),
    })
}

/// Looks up the envelope fields in a stored root container's bytes, without copying them.
pub fn shape(container: &[u8]) -> Result<Shape<'_>, EnvelopeError> {
    match Root::parse(container).ok_or(EnvelopeError::DamagedJsonb)? {
        Root::NotAnObject => Ok(Shape::NotAnObject),
        Root::Object(object) if object.is_empty() => Ok(Shape::EmptyObject),
        Root::Object(object) => Ok(Shape::Object(envelope_fields(&object))),
    }
}

/// The decoded envelope of a stored root container; `None` for `{}`.
pub fn sealed(container: &[u8]) -> Result<Option<Sealed>, EnvelopeError> {
    match shape(container)? {
        Shape::NotAnObject => Err(EnvelopeError::NotAnObject),
        Shape::EmptyObject => Ok(None),
        Shape::Object([algorithm, iv, ciphertext, tag]) => {
            Sealed::decode(algorithm, iv, ciphertext, tag).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::tests::container;

    #[test]
    fn maps_each_kind_of_stored_value() {
        assert!(matches!(shape(&container(&[])), Ok(Shape::EmptyObject)));
        assert!(matches!(sealed(&container(&[])), Ok(None)));
        // A top-level scalar: one-element array flagged as a scalar.
        let scalar = [
            1u32 | crate::container::JB_FSCALAR | crate::container::JB_FARRAY,
            0,
        ]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect::<Vec<u8>>();
        assert!(matches!(shape(&scalar), Ok(Shape::NotAnObject)));
        assert_eq!(sealed(&scalar).err(), Some(EnvelopeError::NotAnObject));
        assert_eq!(sealed(&[1, 2]).err(), Some(EnvelopeError::DamagedJsonb));
        let bytes = container(&[("iv", None), ("algorithm", Some("aes-256-gcm"))]);
        let Ok(Shape::Object([algorithm, iv, ciphertext, tag])) = shape(&bytes) else {
            panic!("not read as an object");
        };
        assert!(matches!(algorithm, Field::Str(b"aes-256-gcm")));
        assert!(matches!(iv, Field::NotAString));
        assert!(matches!(
            (ciphertext, tag),
            (Field::Missing, Field::Missing)
        ));
        assert_eq!(sealed(&bytes).err(), Some(EnvelopeError::NotAString("iv")));
    }
}
