//! Table definitions shared by both backends (only types both support: BigInt, Text).

diesel::table! {
    activities (id) {
        id -> BigInt,
        project -> Nullable<Text>,
        actor -> Text,
        verb -> Text,
        object -> Nullable<Text>,
        data -> Nullable<Text>,
        created_at -> BigInt,
    }
}
