//! What a room, event or project name may be: rules shared by the wire protocols, the routes,
//! the operation kinds file and the operation manager. No dependencies beyond the error codes, so
//! every layer may use them (they used to live in `protocol`, which made `operations` import
//! the wire layer above it).

use crate::error_code::{ErrorCode, Refusal};

/// Room names: `[A-Za-z0-9:_.-]{1,128}`.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-'))
}

/// Event names: 1-128 bytes, no control characters.
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
}

/// A project's room, `project:<project>`, or why `project` is no project name.
pub fn project_room(project: &str) -> Result<String, Refusal> {
    let room = format!("project:{project}");
    if project.is_empty() || !valid_room_name(&room) {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            "field `project` must be 1-120 characters of A-Z a-z 0-9 : _ . -",
        ));
    }
    Ok(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_room_is_a_valid_room_of_a_non_empty_project() {
        assert_eq!(project_room("p-1").as_deref(), Ok("project:p-1"));
        assert!(project_room("").is_err());
        assert!(project_room("has space").is_err());
        assert!(project_room(&"x".repeat(120)).is_ok());
        assert!(project_room(&"x".repeat(121)).is_err());
    }
}
