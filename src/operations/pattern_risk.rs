//! Start-up checks of the patterns that guard command lines.
//!
//! A value that starts with `-` reaches a program as an option (`-oProxyCommand=…` turned an
//! ssh target into code execution), and `..` in a value that a program treats as a path walks
//! out of the directory it was meant for. Kinds should declare patterns that accept neither;
//! this module says, exactly, whether a pattern does: it compiles the anchored pattern to a
//! DFA and asks whether any accepted string starts with `-` or contains `..` (a reachability
//! question over the DFA's states, not a guess from sample strings).

use std::collections::{HashSet, VecDeque};

use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::Anchored;

/// What an anchored pattern lets through that an argv value should not start with or contain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Risks {
    /// Some accepted value starts with `-` (it would be read as an option).
    pub leading_dash: bool,
    /// Some accepted value contains `..` (a path that leaves its directory).
    pub dot_dot: bool,
}

impl Risks {
    pub fn any(self) -> bool {
        self.leading_dash || self.dot_dot
    }
}

/// DFAs over this size are not analysed (`None`): no pattern a kind needs comes near it.
const DFA_SIZE_LIMIT: usize = 4 << 20;

/// The risks of `pattern` matched as a whole value (it is anchored here, as kinds anchor it).
/// `None` when the pattern cannot be analysed (too large a DFA, or Unicode word boundaries,
/// which a DFA cannot represent).
pub fn risks(pattern: &str) -> Option<Risks> {
    let dfa = dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(regex_automata::dfa::StartKind::Anchored)
                .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
        )
        .build(&format!("^(?:{pattern})$"))
        .ok()?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .ok()?;
    let leading_dash = accepts_from(&dfa, dfa.next_state(start, b'-'));
    let dot_dot = reachable(&dfa, start).into_iter().any(|s| {
        let after = dfa.next_state(dfa.next_state(s, b'.'), b'.');
        accepts_from(&dfa, after)
    });
    Some(Risks {
        leading_dash,
        dot_dot,
    })
}

/// Every live state reachable from `from` over any bytes (`from` included).
fn reachable(dfa: &dense::DFA<Vec<u32>>, from: StateID) -> Vec<StateID> {
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([from]);
    let mut out = Vec::new();
    while let Some(s) = queue.pop_front() {
        if dfa.is_dead_state(s) || dfa.is_quit_state(s) || !seen.insert(s) {
            continue;
        }
        out.push(s);
        for byte in 0..=255u8 {
            queue.push_back(dfa.next_state(s, byte));
        }
    }
    out
}

/// Some string read from state `from` ends in a match. Matches are reported one byte late in
/// these DFAs, so a state accepts at the end of input when its end-of-input transition lands
/// in a match state.
fn accepts_from(dfa: &dense::DFA<Vec<u32>>, from: StateID) -> bool {
    reachable(dfa, from)
        .into_iter()
        .any(|s| dfa.is_match_state(dfa.next_eoi_state(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str) -> Risks {
        risks(p).expect("analysable")
    }

    #[test]
    fn a_class_with_a_dash_accepts_a_leading_dash_and_dots() {
        // The example patterns this server shipped before.
        assert_eq!(
            r("[a-z0-9@._-]{1,64}"),
            Risks {
                leading_dash: true,
                dot_dot: true
            }
        );
        assert_eq!(
            r("[A-Za-z0-9:_./@-]{1,256}"),
            Risks {
                leading_dash: true,
                dot_dot: true
            }
        );
        assert_eq!(
            r("[a-z0-9][a-z0-9.-]{0,252}"),
            Risks {
                leading_dash: false,
                dot_dot: true
            }
        );
    }

    #[test]
    fn patterns_that_refuse_both_are_clean() {
        for p in [
            "minimal|standard|full",
            "[a-z]+",
            "[a-z0-9](?:\\.?[a-z0-9-]){0,252}",
            "[a-z0-9@_](?:\\.?[a-z0-9@_-]){0,63}",
            super::super::config::DEFAULT_TARGET,
        ] {
            assert_eq!(r(p), Risks::default(), "{p}");
        }
    }

    #[test]
    fn a_dash_or_dots_only_in_the_middle_or_an_alternative_is_found() {
        assert!(r("a|-b").leading_dash);
        assert!(!r("a-b").leading_dash);
        assert!(r("x(?:/\\.\\.)?").dot_dot);
        assert!(!r("x\\.y").dot_dot);
        assert!(r(".*").any());
    }
}
