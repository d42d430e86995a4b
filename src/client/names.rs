//! The names behind ids, as an opted-in exhibitor is told them by WHO
//! (PROTOCOL.md, "Names"): how a client shows an id, and which id a name
//! typed by its user means. Ids are u16s of two ranges, so the map holds
//! at most 8191 names of at most 24 bytes each.

use crate::cli::escape_text;
use crate::proto::ext::Who;
use crate::proto::{BROADCAST, ClientId, is_emitter_id, is_exhibitor_id};
use std::collections::BTreeMap;

/// What a client knows of who holds which id.
#[derive(Debug, Default, Clone)]
pub struct Names {
    /// What the server said the id's holder is called: shown, and looked
    /// up by `/to NAME`.
    by_id: BTreeMap<ClientId, String>,
    /// What the server said an id was called when a message that waited
    /// was stored (the WHO between WAITING and its MSG): shown for the id,
    /// never looked up, since the id may be someone else's now (after a
    /// restart, even our own).
    past: BTreeMap<ClientId, String>,
}

/// Why a name typed by the user does not lead to one id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameLookupError {
    #[error("no one named '{0}' is known here; /list shows who is connected")]
    Unknown(String),
    #[error("'{name}' is on several ids ({}); pick one with its id", list(.ids))]
    Several { name: String, ids: Vec<ClientId> },
}

fn list(ids: &[ClientId]) -> String {
    ids.iter()
        .map(ClientId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Names {
    /// Takes what a WHO says: the id's name, or (NL = 0) that it has none.
    pub fn learn(&mut self, who: &Who) {
        self.past.remove(&who.id);
        if who.name.is_empty() {
            self.by_id.remove(&who.id);
        } else {
            // The server sends names by the name rule; escaped anyway, so
            // nothing it sends can act on the terminal.
            self.by_id.insert(who.id, escape_text(&who.name));
        }
    }

    /// Takes a WHO told before a message that waited (PROTOCOL.md,
    /// "Waiting messages"): the name the id had when the message was
    /// stored. It is the server's last word on the id, so it is what the id
    /// shows until the next WHO; but it says nothing of who holds the id
    /// now, so `resolve` does not find it.
    pub fn learn_past(&mut self, who: &Who) {
        self.by_id.remove(&who.id);
        if who.name.is_empty() {
            self.past.remove(&who.id);
        } else {
            self.past.insert(who.id, escape_text(&who.name));
        }
    }

    /// Forgets every id a client list does not carry: they have left, and
    /// whoever gets the id next is told again.
    pub fn keep_only(&mut self, listed: &[ClientId]) {
        self.by_id.retain(|id, _| listed.binary_search(id).is_ok());
        self.past.retain(|id, _| listed.binary_search(id).is_ok());
    }

    /// Forgets everything (a new session: the server tells it afresh).
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.past.clear();
    }

    /// The name of `id`, if it has one.
    pub fn name(&self, id: ClientId) -> Option<&str> {
        self.by_id
            .get(&id)
            .or(self.past.get(&id))
            .map(String::as_str)
    }

    /// How `id` is shown: its name when it has one, else the number; 0 as
    /// a destination is `all`.
    pub fn label(&self, id: ClientId) -> String {
        match self.name(id) {
            Some(name) => name.to_string(),
            None if id == BROADCAST => "all".to_string(),
            None => id.to_string(),
        }
    }

    /// An id in a client list: `name(id)` when it has a name.
    pub fn listed(&self, id: ClientId) -> String {
        match self.name(id) {
            Some(name) => format!("{name}({id})"),
            None => id.to_string(),
        }
    }

    /// The id a message to `name` (any case) goes to. Its exhibitor's ids
    /// come first, an emitter's id reaching its exhibitor too; `own` ids
    /// count only when no one else has the name.
    pub fn resolve(&self, name: &str, own: &[ClientId]) -> Result<ClientId, NameLookupError> {
        let holders: Vec<ClientId> = self
            .by_id
            .iter()
            .filter(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(&id, _)| id)
            .collect();
        let others: Vec<ClientId> = holders
            .iter()
            .copied()
            .filter(|id| !own.contains(id))
            .collect();
        let pool = if others.is_empty() { holders } else { others };
        let exhibitors: Vec<ClientId> = pool
            .iter()
            .copied()
            .filter(|&id| is_exhibitor_id(id))
            .collect();
        let candidates = if exhibitors.is_empty() {
            pool.into_iter().filter(|&id| is_emitter_id(id)).collect()
        } else {
            exhibitors
        };
        match candidates[..] {
            [] => Err(NameLookupError::Unknown(name.to_string())),
            [id] => Ok(id),
            _ => Err(NameLookupError::Several {
                name: name.to_string(),
                ids: candidates,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: ClientId, name: &str) -> Who {
        Who {
            origin: u16::MAX,
            dest: 4096,
            seq: 0,
            id,
            roles: 7,
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn ids_show_their_names_and_unnamed_ids_stay_numbers() {
        let mut names = Names::default();
        names.learn(&who(1, "alice"));
        assert_eq!(names.label(1), "alice");
        assert_eq!(names.label(2), "2");
        assert_eq!(names.label(0), "all");
        assert_eq!(names.listed(1), "alice(1)");
        assert_eq!(names.listed(4096), "4096");
        // NL = 0: the id is now someone without a name.
        names.learn(&who(1, ""));
        assert_eq!(names.label(1), "1");
        // Whatever the server sends cannot reach the terminal raw.
        names.learn(&who(3, "a\x1b[2Jb"));
        assert_eq!(names.label(3), r"a\x1b[2Jb");
    }

    #[test]
    fn a_name_resolves_to_its_exhibitor_ignoring_case() {
        let mut names = Names::default();
        names.learn(&who(1, "Alice"));
        assert_eq!(names.resolve("alice", &[]), Ok(1));
        names.learn(&who(4097, "Alice"));
        assert_eq!(names.resolve("ALICE", &[]), Ok(4097));
        assert_eq!(
            names.resolve("bob", &[]),
            Err(NameLookupError::Unknown("bob".into()))
        );
        // Two sessions of one account: the user must choose.
        names.learn(&who(4099, "alice"));
        assert_eq!(
            names.resolve("alice", &[]),
            Err(NameLookupError::Several {
                name: "alice".into(),
                ids: vec![4097, 4099]
            })
        );
        // Our own session is left out while another holds the name.
        assert_eq!(names.resolve("alice", &[4099]), Ok(4097));
        assert_eq!(names.resolve("alice", &[4097, 4099]), Ok(1));
    }

    /// Regression: after a restart the WHO before a waiting message named
    /// id 1 "alice", the teller then, while id 1 was our own emitter now;
    /// `/to alice` then sent the message to ourselves.
    #[test]
    fn a_name_told_before_a_waiting_message_is_shown_but_not_looked_up() {
        let mut names = Names::default();
        names.learn(&who(2, "carol"));
        names.learn_past(&who(1, "alice"));
        names.learn_past(&who(2, "dave"));
        assert_eq!(names.label(1), "alice");
        assert_eq!(names.label(2), "dave");
        for name in ["alice", "dave", "carol"] {
            assert_eq!(
                names.resolve(name, &[1, 4096]),
                Err(NameLookupError::Unknown(name.into()))
            );
        }
        // The next WHO for the id is about whoever holds it now.
        names.learn(&who(1, "bob"));
        assert_eq!(names.label(1), "bob");
        assert_eq!(names.resolve("bob", &[]), Ok(1));
        names.keep_only(&[1]);
        assert_eq!(names.label(2), "2");
    }

    #[test]
    fn a_client_list_forgets_who_left() {
        let mut names = Names::default();
        names.learn(&who(1, "alice"));
        names.learn(&who(4096, "alice"));
        names.learn(&who(4097, "bob"));
        names.keep_only(&[1, 4097]);
        assert_eq!(names.label(4096), "4096");
        assert_eq!(names.label(4097), "bob");
    }
}
