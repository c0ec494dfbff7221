//! Roles and what each may do, Kubernetes-RBAC style but fixed: four roles,
//! five permissions, and one table that maps every API route to the
//! permission it needs. Pure, so the table is tested without a server.

use serde::{Deserialize, Serialize};

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens, certificates and the audit log.
    Admin,
    /// Runs the fleet: nodes, workloads, sync, cache; no token management.
    Operator,
    /// Reads state and metrics.
    Viewer,
    /// An edge node: may join (get a certificate) and attest.
    Node,
}

impl Role {
    /// Parses `admin`, `operator`, `viewer` or `node`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            "node" => Some(Role::Node),
            _ => None,
        }
    }

    /// Whether this role holds `p`.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(p, Read | Write),
            Role::Viewer => p == Read,
            Role::Node => matches!(p, Join | Attest),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Node => "node",
        })
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read state, metrics, reports.
    Read,
    /// Change workloads, nodes, sync jobs, cache; get a short-lived client
    /// certificate for agent data ports.
    Write,
    /// Tokens and the audit log.
    Manage,
    /// Exchange a join token and a CSR for a node certificate.
    Join,
    /// Submit attestation evidence.
    Attest,
}

/// The permission `method path` needs, or `None` for public routes
/// (`/healthz` and the CA certificate, which is public by nature).
pub fn permission_for(method: &str, path: &str) -> Option<Permission> {
    let read = matches!(method, "GET" | "HEAD");
    match path {
        "/healthz" | "/api/v1/ca" => None,
        "/api/v1/join" => Some(Permission::Join),
        p if p.starts_with("/api/v1/nodes/") && p.ends_with("/attestation") && !read => Some(Permission::Attest),
        p if p.starts_with("/api/v1/tokens") || p.starts_with("/api/v1/audit") => Some(Permission::Manage),
        _ if read => Some(Permission::Read),
        _ => Some(Permission::Write),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_get_what_the_table_says() {
        let can = |r: Role, m: &str, p: &str| permission_for(m, p).is_none_or(|perm| r.allows(perm));
        assert!(can(Role::Viewer, "GET", "/api/v1/nodes"));
        assert!(!can(Role::Viewer, "POST", "/api/v1/workloads"));
        assert!(can(Role::Operator, "POST", "/api/v1/workloads"));
        assert!(can(Role::Operator, "DELETE", "/api/v1/nodes/a"));
        assert!(!can(Role::Operator, "POST", "/api/v1/tokens"));
        assert!(!can(Role::Operator, "GET", "/api/v1/audit/verify"));
        assert!(can(Role::Operator, "POST", "/api/v1/certs") && !can(Role::Viewer, "POST", "/api/v1/certs"));
        assert!(can(Role::Admin, "DELETE", "/api/v1/tokens/x"));
        assert!(can(Role::Node, "POST", "/api/v1/join"));
        assert!(can(Role::Node, "POST", "/api/v1/nodes/a/attestation"));
        assert!(!can(Role::Node, "GET", "/api/v1/nodes"));
        assert!(!can(Role::Viewer, "POST", "/api/v1/join"));
        assert!(can(Role::Viewer, "GET", "/healthz") && can(Role::Node, "GET", "/api/v1/ca"));
        for r in [Role::Admin, Role::Operator, Role::Viewer, Role::Node] {
            assert_eq!(Role::parse(&r.to_string()), Some(r));
        }
    }
}
