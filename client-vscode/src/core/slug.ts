/** Slug validation, the engine's rule: ^[a-z0-9]+(-[a-z0-9]+)*$, at most 64 characters. */

export const SLUG_PATTERN = /^[a-z0-9]+(-[a-z0-9]+)*$/;
export const SLUG_MAX_LENGTH = 64;

/** Returns undefined for a valid slug, else a message saying what is wrong (for an input box). */
export function validateSlug(slug: string, existing: Iterable<string> = []): string | undefined {
  if (slug.length === 0) {
    return "Enter a slug: lowercase letters, digits and single hyphens, e.g. fix-login-bug.";
  }
  if (slug.length > SLUG_MAX_LENGTH) {
    return `At most ${SLUG_MAX_LENGTH} characters (this one has ${slug.length}).`;
  }
  if (/[A-Z]/.test(slug)) {
    return "Use lowercase letters only.";
  }
  if (/[^a-z0-9-]/.test(slug)) {
    return "Only lowercase letters, digits and hyphens are allowed.";
  }
  if (slug.startsWith("-") || slug.endsWith("-")) {
    return "A slug cannot start or end with a hyphen.";
  }
  if (slug.includes("--")) {
    return "Use single hyphens between words.";
  }
  if (!SLUG_PATTERN.test(slug)) {
    return "Slugs match ^[a-z0-9]+(-[a-z0-9]+)*$.";
  }
  for (const other of existing) {
    if (other === slug) {
      return `A workstream named '${slug}' already exists.`;
    }
  }
  return undefined;
}

/** Suggests a slug from free text ("Fix the Login bug!" -> "fix-the-login-bug"). */
export function suggestSlug(text: string): string {
  const slug = text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "");
  return slug.slice(0, SLUG_MAX_LENGTH).replace(/-+$/, "");
}
