//! Wire formats, one module per protocol. Nothing here knows about actors: a frame is parsed
//! once into a typed request, and replies are encoded from plain data.

pub mod native;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_pattern() {
        assert!(valid_room_name("project:42"));
        assert!(valid_room_name("a.b-c_d:E9"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("has space"));
        assert!(!valid_room_name("emoji🙂"));
        assert!(!valid_room_name(&"x".repeat(129)));
        assert!(valid_room_name(&"x".repeat(128)));
    }
}
