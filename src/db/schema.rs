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

diesel::table! {
    operations (id) {
        id -> Text,
        kind -> Text,
        target -> Text,
        project -> Nullable<Text>,
        runner -> Text,
        status -> Text,
        progress -> Double,
        stage -> Nullable<Text>,
        stages -> Text,
        message -> Nullable<Text>,
        eta_seconds -> Nullable<BigInt>,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        params -> Text,
        created_by -> Nullable<Text>,
        created_at -> BigInt,
        started_at -> Nullable<BigInt>,
        updated_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        log_offset -> BigInt,
        details -> Nullable<Text>,
        owner -> Nullable<Text>,
        lease_expires -> Nullable<BigInt>,
        fence -> BigInt,
        holds_slot -> Bool,
    }
}

diesel::table! {
    operation_logs (operation_id, seq) {
        operation_id -> Text,
        seq -> BigInt,
        stream -> Text,
        line -> Text,
        ts -> BigInt,
    }
}

diesel::joinable!(operation_logs -> operations (operation_id));
diesel::allow_tables_to_appear_in_same_query!(operations, operation_logs, operation_worker_tokens);

diesel::table! {
    operation_worker_tokens (operation_id) {
        operation_id -> Text,
        token_sha256 -> Text,
    }
}
