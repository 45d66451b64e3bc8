//! `server.auth.access_policy`: Llama Stack's attribute-based access rules. Each rule permits or
//! forbids actions on resources (`model::gpt-4o`, `model::*`) to a principal, optionally
//! `when` or `unless` conditions on the user's attributes hold; the first rule whose scope and
//! conditions match decides, and when none does the action is refused. An empty policy is
//! Llama Stack's default (the owner's attributes), which for tokentrace's resources (models,
//! which have no owner) permits everything.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `create`.
    Create,
    /// `read`: for a model, calling it through the gateway and seeing it in `/v1/models`.
    Read,
    /// `update`.
    Update,
    /// `delete`.
    Delete,
}

impl Action {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "create" => Action::Create,
            "read" => Action::Read,
            "update" => Action::Update,
            "delete" => Action::Delete,
            _ => return None,
        })
    }
}

/// A condition on the user (and the resource's owner: tokentrace's resources have none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `user is owner`.
    IsOwner,
    /// `user is not owner`.
    IsNotOwner,
    /// `user with <value> in <attribute>`.
    WithValueIn(String, String),
    /// `user with <value> not in <attribute>`.
    WithValueNotIn(String, String),
    /// `user in owners <attribute>`.
    InOwners(String),
    /// `user not in owners <attribute>`.
    NotInOwners(String),
}

impl Condition {
    fn parse(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        Ok(match words.as_slice() {
            ["user", "is", "owner"] => Condition::IsOwner,
            ["user", "is", "not", "owner"] => Condition::IsNotOwner,
            ["user", "with", v, "in", a] => Condition::WithValueIn(v.to_string(), a.to_string()),
            ["user", "with", v, "not", "in", a] => {
                Condition::WithValueNotIn(v.to_string(), a.to_string())
            }
            ["user", "in", "owners", a] => Condition::InOwners(a.to_string()),
            ["user", "not", "in", "owners", a] => Condition::NotInOwners(a.to_string()),
            _ => {
                return Err(format!(
                    "{s:?} is not a condition: use \"user is owner\", \"user is not owner\", \"user with <value> in <attribute>\", \"user with <value> not in <attribute>\", \"user in owners <attribute>\" or \"user not in owners <attribute>\""
                ));
            }
        })
    }

    /// Whether it holds for `user` on a resource without an owner.
    fn holds(&self, user: &User<'_>) -> bool {
        let has = |v: &str, a: &str| {
            user.attributes
                .get(a)
                .is_some_and(|vs| vs.iter().any(|x| x == v))
        };
        match self {
            Condition::IsOwner => false,
            Condition::IsNotOwner => true,
            Condition::WithValueIn(v, a) => has(v, a),
            Condition::WithValueNotIn(v, a) => !has(v, a),
            // An owner without the attribute requires nothing.
            Condition::InOwners(_) => true,
            Condition::NotInOwners(_) => false,
        }
    }

    /// The config text.
    pub fn text(&self) -> String {
        match self {
            Condition::IsOwner => "user is owner".into(),
            Condition::IsNotOwner => "user is not owner".into(),
            Condition::WithValueIn(v, a) => format!("user with {v} in {a}"),
            Condition::WithValueNotIn(v, a) => format!("user with {v} not in {a}"),
            Condition::InOwners(a) => format!("user in owners {a}"),
            Condition::NotInOwners(a) => format!("user not in owners {a}"),
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRule {
    /// `permit` (else `forbid`).
    pub permit: bool,
    /// The principal it is about (`None`: everyone).
    pub principal: Option<String>,
    /// The actions it is about.
    pub actions: Vec<Action>,
    /// The resource it is about, `type::id` or `type::*` (`None`: every resource).
    pub resource: Option<String>,
    /// It applies when all of these hold.
    pub when: Vec<Condition>,
    /// It applies unless all of these hold.
    pub unless: Vec<Condition>,
    /// What it is for.
    pub description: Option<String>,
}

/// Who asks: the key's name or the token's subject, and its attributes (`scopes`, `projects`,
/// and those the key or the token's mapped claims give: `roles`, `teams`, …).
pub struct User<'a> {
    /// `principal` in rules.
    pub principal: &'a str,
    /// Attribute name → values.
    pub attributes: &'a BTreeMap<String, Vec<String>>,
}

fn resource_matches(scope: &str, resource: &str) -> bool {
    scope == resource
        || scope
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with("::") && resource.starts_with(prefix))
}

impl AccessRule {
    /// Whether the rule is about this action on this resource by this principal.
    fn about(&self, action: Action, resource: &str, principal: &str) -> bool {
        self.resource
            .as_deref()
            .is_none_or(|r| resource_matches(r, resource))
            && self.principal.as_deref().is_none_or(|p| p == principal)
            && self.actions.contains(&action)
    }

    /// Whether its conditions let it apply.
    fn applies(&self, user: &User<'_>) -> bool {
        if !self.when.is_empty() {
            self.when.iter().all(|c| c.holds(user))
        } else if !self.unless.is_empty() {
            !self.unless.iter().all(|c| c.holds(user))
        } else {
            true
        }
    }
}

/// Whether `user` may do `action` on `resource` (`type::id`) under `policy`: the first rule
/// about it whose conditions let it apply decides; none: refused. An empty policy permits
/// everything (Llama Stack's default, for resources without an owner).
pub fn is_allowed(policy: &[AccessRule], action: Action, resource: &str, user: &User<'_>) -> bool {
    if policy.is_empty() {
        return true;
    }
    for rule in policy {
        if rule.about(action, resource, user.principal) && rule.applies(user) {
            return rule.permit;
        }
    }
    false
}

/// One word or a list of them, as Llama Stack's rules accept.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    principal: Option<String>,
    actions: OneOrMany,
    #[serde(default)]
    resource: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(default)]
    permit: Option<RawScope>,
    #[serde(default)]
    forbid: Option<RawScope>,
    #[serde(default)]
    when: Option<OneOrMany>,
    #[serde(default)]
    unless: Option<OneOrMany>,
    #[serde(default)]
    description: Option<String>,
}

impl RawRule {
    /// Validates one rule; errors name the part at fault (relative to the rule).
    pub(crate) fn build(self) -> Result<AccessRule, (String, String)> {
        let err = |at: &str, msg: String| Err((at.to_string(), msg));
        let (permit, scope) = match (self.permit, self.forbid) {
            (Some(s), None) => (true, s),
            (None, Some(s)) => (false, s),
            _ => return err("", "give exactly one of permit or forbid".into()),
        };
        let kind = if permit { "permit" } else { "forbid" };
        if self.when.is_some() && self.unless.is_some() {
            return err("", "give when or unless, not both".into());
        }
        let mut actions = Vec::new();
        for a in scope.actions.into_vec() {
            match Action::parse(&a) {
                Some(a) => actions.push(a),
                None => {
                    return err(
                        &format!("{kind}.actions"),
                        format!("unknown action {a:?}; actions: create, read, update, delete"),
                    );
                }
            }
        }
        if actions.is_empty() {
            return err(
                &format!("{kind}.actions"),
                "name at least one action".into(),
            );
        }
        if let Some(r) = &scope.resource {
            let ok = r
                .split_once("::")
                .is_some_and(|(t, id)| !t.is_empty() && !id.is_empty());
            if !ok {
                return err(
                    &format!("{kind}.resource"),
                    format!(
                        "{r:?} is not a resource: use type::identifier, e.g. model::gpt-4o or model::*"
                    ),
                );
            }
        }
        let conditions =
            |c: Option<OneOrMany>, at: &str| -> Result<Vec<Condition>, (String, String)> {
                c.map(OneOrMany::into_vec)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| Condition::parse(s).map_err(|m| (at.to_string(), m)))
                    .collect()
            };
        Ok(AccessRule {
            permit,
            principal: scope.principal,
            actions,
            resource: scope.resource,
            when: conditions(self.when, "when")?,
            unless: conditions(self.unless, "unless")?,
            description: self.description,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<AccessRule> {
        let raw: Vec<RawRule> = serde_saphyr::from_str(yaml).unwrap();
        raw.into_iter().map(|r| r.build().unwrap()).collect()
    }

    #[test]
    fn the_first_matching_rule_decides_and_none_refuses() {
        let policy = rules(
            "- permit: {principal: alice, actions: [read], resource: model::gpt-4o}\n\
             - forbid: {actions: read, resource: model::gpt-4o}\n\
             - permit: {actions: [read], resource: 'model::*'}\n  when: user with ml in teams\n\
             - permit: {actions: [read], resource: model::echo}\n  unless: [user with intern in roles]\n",
        );
        let attrs = |pairs: &[(&str, &str)]| {
            let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in pairs {
                m.entry(k.to_string()).or_default().push(v.to_string());
            }
            m
        };
        let may = |who: &str, a: &BTreeMap<String, Vec<String>>, model: &str| {
            let user = User {
                principal: who,
                attributes: a,
            };
            is_allowed(&policy, Action::Read, &format!("model::{model}"), &user)
        };
        let none = attrs(&[]);
        let ml = attrs(&[("teams", "ml")]);
        let intern = attrs(&[("roles", "intern")]);
        assert!(may("alice", &none, "gpt-4o"));
        assert!(!may("bob", &ml, "gpt-4o"), "forbidden before the team rule");
        assert!(may("bob", &ml, "llama"));
        assert!(!may("bob", &none, "llama"), "no rule applies: refused");
        assert!(may("bob", &none, "echo"));
        assert!(!may("bob", &intern, "echo"));
        assert!(is_allowed(
            &[],
            Action::Delete,
            "model::x",
            &User {
                principal: "x",
                attributes: &none
            }
        ));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (yaml, why) in [
            ("- description: x\n", "exactly one of permit or forbid"),
            (
                "- permit: {actions: [read]}\n  forbid: {actions: [read]}\n",
                "exactly one",
            ),
            ("- permit: {actions: [fly]}\n", "unknown action"),
            (
                "- permit: {actions: [read], resource: gpt-4o}\n",
                "type::identifier",
            ),
            (
                "- permit: {actions: [read]}\n  when: user is admin\n",
                "not a condition",
            ),
            (
                "- permit: {actions: [read]}\n  when: user is owner\n  unless: user is owner\n",
                "not both",
            ),
        ] {
            let raw: Vec<RawRule> = serde_saphyr::from_str(yaml).unwrap();
            let e = raw.into_iter().map(RawRule::build).find_map(Result::err);
            let (_, msg) = e.unwrap_or_else(|| panic!("{yaml} was accepted"));
            assert!(msg.contains(why), "{yaml}: {msg}");
        }
    }
}
