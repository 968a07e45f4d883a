//! Who may do what, and which tenant's data they may see: the one place both are decided.
//!
//! Every staff endpoint takes a [`Caller`] (the HTTP layer extracts it from the bearer token and
//! answers 401 when it cannot), then asks two questions before touching data:
//!
//! ```ignore
//! async fn retry_job(caller: Caller, State(state): State<AppState>, Path(id): Path<Uuid>)
//!     -> Result<Json<Job>, ApiError>
//! {
//!     caller.require(&[Role::Admin, Role::Support])?;          // 403 for any other role
//!     let job = load_job(&state.pool, id).await?.ok_or(ApiError::NotFound("no such job"))?;
//!     caller.tenant_scope(job.tenant_id)?;                       // 404 for another tenant's job
//!     ...
//! }
//! ```
//!
//! Lists filter in SQL with [`Caller::tenant_filter`]: `WHERE ($1::uuid IS NULL OR tenant_id =
//! $1)`, binding the filter (`None` only for a super admin).
//!
//! `super_admin` passes every [`Caller::require`] and sees every tenant. Another tenant's
//! resource answers 404, never 403, so ids cannot be probed across tenants. Customers are
//! further limited to their own orders and subscriptions: endpoints open to
//! [`Role::Customer`] must also match the resource's customer to the caller.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user's role (DESIGN §5). Stored and signed as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operator across all tenants.
    SuperAdmin,
    /// Runs one tenant: catalog, orders, retries, lifecycle.
    Admin,
    /// Reads one tenant's data and retries its jobs.
    Support,
    /// Reads one tenant's data, including the event log.
    Auditor,
    /// Sees their own orders and subscriptions only.
    Customer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::SuperAdmin,
        Role::Admin,
        Role::Support,
        Role::Auditor,
        Role::Customer,
    ];

    /// The stored name (`super_admin`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "super_admin",
            Role::Admin => "admin",
            Role::Support => "support",
            Role::Auditor => "auditor",
            Role::Customer => "customer",
        }
    }

    /// Whether the role is bound to one tenant (all but `super_admin`).
    #[must_use]
    pub fn is_tenant_bound(self) -> bool {
        self != Role::SuperAdmin
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role; expected one of super_admin, admin, support, auditor, customer")]
pub struct UnknownRole;

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(UnknownRole)
    }
}

/// Why a [`Caller`] may not go on. The HTTP layer turns [`Denied::Forbidden`] into 403 and
/// [`Denied::NotFound`] into 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The caller's role may not do this.
    #[error("your role may not do this")]
    Forbidden,
    /// The resource belongs to another tenant; answered as if it did not exist.
    #[error("not found")]
    NotFound,
}

/// Whose data a list may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant's (super admin).
    All,
    /// One tenant's.
    Tenant(Uuid),
}

/// The authenticated user behind a request, as checked against the database for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub user_id: Uuid,
    /// Their tenant; `None` only for a super admin.
    pub tenant_id: Option<Uuid>,
    /// Their role.
    pub role: Role,
}

impl Caller {
    /// A caller, if role and tenant agree (a super admin has no tenant, everyone else one).
    #[must_use]
    pub fn new(user_id: Uuid, tenant_id: Option<Uuid>, role: Role) -> Option<Self> {
        (role.is_tenant_bound() == tenant_id.is_some()).then_some(Self {
            user_id,
            tenant_id,
            role,
        })
    }

    /// Allows the caller if their role is in `allowed` (a super admin always is).
    ///
    /// # Errors
    /// [`Denied::Forbidden`] otherwise.
    pub fn require(&self, allowed: &[Role]) -> Result<(), Denied> {
        if self.role == Role::SuperAdmin || allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        }
    }

    /// Allows the caller to see a resource of `resource_tenant` (a super admin sees all).
    ///
    /// # Errors
    /// [`Denied::NotFound`] for another tenant's resource: its existence is not revealed.
    pub fn tenant_scope(&self, resource_tenant: Uuid) -> Result<(), Denied> {
        match self.scope() {
            TenantScope::All => Ok(()),
            TenantScope::Tenant(own) if own == resource_tenant => Ok(()),
            TenantScope::Tenant(_) => Err(Denied::NotFound),
        }
    }

    /// Whose data the caller's lists show.
    #[must_use]
    pub fn scope(&self) -> TenantScope {
        match (self.role, self.tenant_id) {
            (Role::SuperAdmin, _) => TenantScope::All,
            (_, Some(tenant)) => TenantScope::Tenant(tenant),
            // Unreachable through `Caller::new`; fail closed with a tenant nobody has.
            (_, None) => TenantScope::Tenant(Uuid::nil()),
        }
    }

    /// The tenant to bind in a list query's `($1::uuid IS NULL OR tenant_id = $1)`; `None`
    /// means every tenant.
    #[must_use]
    pub fn tenant_filter(&self) -> Option<Uuid> {
        match self.scope() {
            TenantScope::All => None,
            TenantScope::Tenant(t) => Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAFF: [Role; 4] = [Role::Admin, Role::Support, Role::Auditor, Role::Customer];

    fn caller(role: Role, tenant: Option<Uuid>) -> Caller {
        Caller::new(Uuid::new_v4(), tenant, role).expect("consistent caller")
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).expect("serializes"),
                serde_json::json!(role.as_str())
            );
        }
        assert_eq!("Admin".parse::<Role>(), Err(UnknownRole));
        assert_eq!("root".parse::<Role>(), Err(UnknownRole));
    }

    #[test]
    fn role_and_tenant_must_agree() {
        let tenant = Some(Uuid::new_v4());
        assert!(Caller::new(Uuid::new_v4(), tenant, Role::SuperAdmin).is_none());
        assert!(Caller::new(Uuid::new_v4(), None, Role::SuperAdmin).is_some());
        for role in STAFF {
            assert!(Caller::new(Uuid::new_v4(), None, role).is_none(), "{role}");
            assert!(
                Caller::new(Uuid::new_v4(), tenant, role).is_some(),
                "{role}"
            );
        }
    }

    #[test]
    fn require_admits_listed_roles_and_the_super_admin_only() {
        let tenant = Some(Uuid::new_v4());
        let allowed = [Role::Admin, Role::Support];
        assert_eq!(caller(Role::Admin, tenant).require(&allowed), Ok(()));
        assert_eq!(caller(Role::Support, tenant).require(&allowed), Ok(()));
        assert_eq!(caller(Role::SuperAdmin, None).require(&allowed), Ok(()));
        assert_eq!(caller(Role::SuperAdmin, None).require(&[]), Ok(()));
        for role in [Role::Auditor, Role::Customer] {
            assert_eq!(
                caller(role, tenant).require(&allowed),
                Err(Denied::Forbidden)
            );
        }
        assert_eq!(
            caller(Role::Admin, tenant).require(&[]),
            Err(Denied::Forbidden)
        );
    }

    #[test]
    fn another_tenants_resource_is_not_found_except_for_the_super_admin() {
        let own = Uuid::new_v4();
        let other = Uuid::new_v4();
        for role in STAFF {
            let c = caller(role, Some(own));
            assert_eq!(c.tenant_scope(own), Ok(()), "{role}");
            assert_eq!(c.tenant_scope(other), Err(Denied::NotFound), "{role}");
            assert_eq!(c.scope(), TenantScope::Tenant(own));
            assert_eq!(c.tenant_filter(), Some(own));
        }
        let root = caller(Role::SuperAdmin, None);
        assert_eq!(root.tenant_scope(own), Ok(()));
        assert_eq!(root.tenant_scope(other), Ok(()));
        assert_eq!(root.scope(), TenantScope::All);
        assert_eq!(root.tenant_filter(), None);
    }

    #[test]
    fn an_inconsistent_caller_built_by_hand_sees_nothing() {
        let c = Caller {
            user_id: Uuid::new_v4(),
            tenant_id: None,
            role: Role::Admin,
        };
        assert_eq!(c.tenant_scope(Uuid::new_v4()), Err(Denied::NotFound));
        assert_eq!(c.tenant_filter(), Some(Uuid::nil()));
    }
}
