//! Where each key and value of a policy file is, so that a problem found after parsing (an
//! unknown role, a bad glob, a duplicate id) names its line and column.
//!
//! serde_yaml_ng keeps the parser's marks (line and column of every node) but hands them out
//! only on errors: a `de::Error` raised while a node is visited comes back carrying that
//! node's mark. [`Positions::of`] walks the document once with a visitor that raises such an
//! error on every scalar, reads the mark off it, and carries on with the next node (a scalar
//! is consumed before its visitor runs, so the document stays in step). Mappings and
//! sequences take the position of their first entry. Nothing here fails: a document the walk
//! cannot finish leaves the positions found so far, and a lookup falls back to the nearest
//! enclosing node.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A 1-based line and column.
pub type Position = (usize, usize);

/// Positions of the nodes of one YAML document, by path: `rules[2].git.refs[0]` (the item),
/// `rules[2].git` (the key `git`), `rules[2]` (its first key), `roles.dev` (the key `dev`).
#[derive(Debug, Default, Clone)]
pub struct Positions {
    at: HashMap<String, Position>,
    /// Keys written twice in one mapping (YAML keeps the last silently): the path, where it
    /// is repeated and where it was first written.
    pub duplicates: Vec<(String, Position, Position)>,
}

/// The message of the errors raised to learn a scalar's position (never shown).
const PROBE: &str = "gatehouse-position-probe";

impl Positions {
    /// Walks the first document of `text`.
    pub fn of(text: &str) -> Positions {
        let mut positions = Positions::default();
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let _ = de.deserialize_any(NodeVisitor {
            path: String::new(),
            out: &mut positions,
        });
        positions
    }

    /// The position of `path`, or else of the nearest enclosing node that has one.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(at) = self.at.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The position of exactly `path`.
    pub fn get(&self, path: &str) -> Option<Position> {
        self.at.get(path).copied()
    }
}

/// The position an error raised by [`PROBE`] carries, read from its `Debug` form
/// (`Error("...", line: L, column: C)`, which unlike `Display` always includes the mark);
/// `None` for any other error.
fn probed(e: &impl fmt::Debug) -> Option<Position> {
    let text = format!("{e:?}");
    if !text.contains(PROBE) {
        return None;
    }
    let (_, at) = text.rsplit_once(", line: ")?;
    let (line, column) = at.split_once(", column: ")?;
    let column = column.trim_end_matches(')');
    Some((line.trim().parse().ok()?, column.trim().parse().ok()?))
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Visits one node. A scalar raises [`PROBE`] (its parent reads the position off the error);
/// a mapping or sequence records its entries and returns the position of the first.
struct NodeVisitor<'a> {
    path: String,
    out: &'a mut Positions,
}

impl<'de> DeserializeSeed<'de> for NodeVisitor<'_> {
    type Value = Option<Position>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// Runs a seed; a probe error becomes the position, any other error stays an error.
fn position_of<E: de::Error>(r: Result<Option<Position>, E>) -> Result<Option<Position>, E> {
    match r {
        Ok(p) => Ok(p),
        Err(e) => match probed(&e) {
            Some(p) => Ok(Some(p)),
            None => Err(e),
        },
    }
}

macro_rules! scalar {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> {
            Err(E::custom(PROBE))
        })*
    };
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Option<Position>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
        visit_u128: u128, visit_f64: f64, visit_str: &str);

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(PROBE))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(PROBE))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut first = None;
        let mut i = 0;
        loop {
            let path = format!("{}[{i}]", self.path);
            let seed = NodeVisitor {
                path: path.clone(),
                out: &mut *self.out,
            };
            let at = match seq.next_element_seed(seed) {
                Ok(None) => break,
                Ok(Some(at)) => at,
                Err(e) => probed(&e).ok_or(e)?.into(),
            };
            if let Some(at) = at {
                self.out.at.entry(path).or_insert(at);
                first = first.or(Some(at));
            }
            i += 1;
        }
        Ok(first)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut first = None;
        loop {
            let mut name = None;
            let key = match map.next_key_seed(KeySeed { name: &mut name }) {
                Ok(None) => break,
                Ok(Some(())) => None,
                Err(e) => Some(probed(&e).ok_or(e)?),
            };
            let path = name.map(|n| child(&self.path, &n));
            if let (Some(path), Some(at)) = (&path, key) {
                if let Some(before) = self.out.at.insert(path.clone(), at) {
                    // The last one is in force (as serde keeps it): forget what was found
                    // under the first.
                    self.out.duplicates.push((path.clone(), at, before));
                    let (dot, bracket) = (format!("{path}."), format!("{path}["));
                    self.out
                        .at
                        .retain(|k, _| !k.starts_with(&dot) && !k.starts_with(&bracket));
                }
                first = first.or(Some(at));
            }
            let value = NodeVisitor {
                path: path.unwrap_or_else(|| format!("{}.?", self.path)),
                out: &mut *self.out,
            };
            let at = position_of(map.next_value_seed(value))?;
            first = first.or(key).or(at);
        }
        Ok(first)
    }
}

/// A mapping key: a scalar's text goes to `name` before the probe error is raised; other keys
/// (sequences, mappings) are skipped.
struct KeySeed<'a> {
    name: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        *self.name = Some(v.to_string());
        Err(E::custom(PROBE))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.visit_str("null")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_str("null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_flow_nodes_have_their_line_and_column() {
        let text = "\
# comment
roles:
  dev: { groups: [eng, ops] }
  sre:
    groups:
      - sre
rules:
  - id: a
    route: gogs
    roles: [dev, \"sre\"]
  -   { id: b, route: gogs, git: { refs: [refs/heads/main] } }
  - route: x
    id: c
";
        let p = Positions::of(text);
        assert_eq!(p.get("roles"), Some((2, 1)));
        assert_eq!(p.get("roles.dev"), Some((3, 3)));
        assert_eq!(p.get("roles.dev.groups"), Some((3, 10)));
        assert_eq!(p.get("roles.dev.groups[1]"), Some((3, 24)));
        assert_eq!(p.get("roles.sre.groups[0]"), Some((6, 9)));
        assert_eq!(p.get("rules[0]"), Some((8, 5)));
        assert_eq!(p.get("rules[0].id"), Some((8, 5)));
        assert_eq!(p.get("rules[0].roles[1]"), Some((10, 18)));
        assert_eq!(p.get("rules[1]"), Some((11, 9)));
        assert_eq!(p.get("rules[1].git.refs[0]"), Some((11, 43)));
        // A rule's position is its first key, whichever it is.
        assert_eq!(p.get("rules[2]"), Some((12, 5)));
        assert_eq!(p.get("rules[2].id"), Some((13, 5)));
        // Unknown paths fall back to the nearest enclosing node.
        assert_eq!(p.find("rules[0].roles[7]"), Some((10, 5)));
        assert_eq!(p.find("rules[1].paths"), Some((11, 9)));
        assert_eq!(p.find("nothing"), None);
        assert!(p.duplicates.is_empty());
    }

    #[test]
    fn values_of_every_kind_are_walked_and_duplicate_keys_are_found() {
        let text = "a: 1\nb: true\nc: ~\nd:\ne: 1.5\n1: x\nf: &x [p, q]\ng: *x\nroles:\n  dev: { groups: [y] }\n  dev: { groups: [x] }\nh: last\n";
        let p = Positions::of(text);
        assert_eq!(p.get("b"), Some((2, 1)));
        assert_eq!(p.get("1"), Some((6, 1)));
        assert_eq!(p.get("g"), Some((8, 1)));
        assert_eq!(p.get("f[1]"), Some((7, 11)));
        assert_eq!(p.get("h"), Some((12, 1)), "the walk went on to the end");
        // A key written twice: found once, and the last one (the one in force) is where
        // its values are.
        assert_eq!(p.duplicates, [("roles.dev".to_string(), (11, 3), (10, 3))]);
        assert_eq!(p.get("roles.dev"), Some((11, 3)));
        assert_eq!(p.get("roles.dev.groups[0]"), Some((11, 19)));
    }

    #[test]
    fn broken_documents_give_what_was_found_and_never_panic() {
        for text in [
            "",
            "just a scalar",
            "- a\n- b",
            "a: [1, 2\n",
            "a: !tag x\nb: 1\n",
            "a: *nope\n",
            "---\na: 1\n---\nb: 2\n",
            "? [complex, key]\n: v\nz: 1\n",
        ] {
            let _ = Positions::of(text);
        }
        assert_eq!(Positions::of("- a\n- b").get("[1]"), Some((2, 3)));
        assert_eq!(
            Positions::of("? [complex, key]\n: v\nz: 1\n").get("z"),
            Some((3, 1))
        );
    }
}
