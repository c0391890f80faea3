// Workspace roles, highest first, and what each may do (domain/roles.py).
export const ROLES = ["owner", "maintainer", "developer", "guest"];
const LEVEL = { guest: 1, developer: 2, maintainer: 3, owner: 4 };

export const atLeast = (role, least) => (LEVEL[role] || 0) >= LEVEL[least];
export const may = {
  operate: (role) => atLeast(role, "developer"), // sandboxes, agent codes
  addMember: (role) => atLeast(role, "maintainer"),
  manage: (role) => atLeast(role, "owner"), // roles, removals, limits, deletion
};
// The roles a member may give when adding someone (maintainers may not add owners).
export const grantable = (role) => (may.manage(role) ? ROLES : ROLES.filter((r) => r !== "owner"));
