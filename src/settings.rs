//! Every setting (GUC) of the extension: registered in [`init`], read through the accessors.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

static PROGRESS_ROWS: GucSetting<i32> = GucSetting::<i32>::new(100_000);

static TRUST_TABLE_CODE: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `credential_rotate.progress_rows`: a NOTICE every this many rows scanned; 0 silences it.
pub fn progress_rows() -> i64 {
    i64::from(PROGRESS_ROWS.get())
}

/// `credential_rotate.trust_table_code`: run a rotation even when the table carries code of
/// another role, and let any function of another role run inside a call. Superuser-only (or
/// `GRANT SET ON PARAMETER`): a table's or database's owner must not be able to turn the check
/// off for the DBA by `ALTER DATABASE … SET` or `ALTER ROLE … SET`.
pub fn trust_table_code() -> bool {
    TRUST_TABLE_CODE.get()
}

/// Registers the settings; called once from `_PG_init`.
pub fn init() {
    GucRegistry::define_int_guc(
        c"credential_rotate.progress_rows",
        c"Rows between two progress NOTICEs of credential_reencrypt; 0 disables them.",
        c"Each NOTICE gives the rows scanned, the table's estimated size and the rate.",
        &PROGRESS_ROWS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"credential_rotate.trust_table_code",
        c"Lets credential_reencrypt run code of other roles attached to the table.",
        c"Triggers, rules, index expressions, constraints and generated columns of other roles run inside the rotation, with the caller's rights. Off: such code is refused, before the rotation and as it is called.",
        &TRUST_TABLE_CODE,
        GucContext::Suset,
        GucFlags::default(),
    );
}
