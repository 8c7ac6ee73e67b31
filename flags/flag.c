/*
 * flag.c - the flag model: construction, copies, validation of names,
 * ids and percentages, and a readable diff for audit and watch output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flags.h"

/* A new flag, disabled at 0%, salted with its own name so that two flags
 * at 10% do not select the same 10% of users. Caller frees. */
struct flag *flag_new(const char *name)
{
	struct flag *f = xcalloc(1, sizeof(*f));
	f->name = xstrdup(name);
	f->salt = xstrdup(name);
	f->description = xstrdup("");
	f->owner = xstrdup("");
	return f;
}

void flag_idlist_free(struct flag_idlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->items[i]);
	free(l->items);
	l->items = NULL;
	l->n = 0;
}

void flag_free(struct flag *f)
{
	if (f == NULL)
		return;
	free(f->name);
	free(f->salt);
	flag_idlist_free(&f->allow);
	flag_idlist_free(&f->deny);
	flag_idlist_free(&f->cohorts);
	free(f->description);
	free(f->owner);
	flag_index_free(f->index);
	free(f);
}

static void flag_idlist_copy(struct flag_idlist *dst, const struct flag_idlist *src)
{
	dst->n = src->n;
	dst->items = xcalloc(src->n ? src->n : 1, sizeof(char *));
	for (size_t i = 0; i < src->n; i++)
		dst->items[i] = xstrdup(src->items[i]);
}

/* A deep copy of the model, without the evaluation index. Caller frees. */
struct flag *flag_clone(const struct flag *f)
{
	struct flag *c = xcalloc(1, sizeof(*c));
	c->name = xstrdup(f->name);
	c->enabled = f->enabled;
	c->kill = f->kill;
	c->percent = f->percent;
	c->salt = xstrdup(f->salt);
	flag_idlist_copy(&c->allow, &f->allow);
	flag_idlist_copy(&c->deny, &f->deny);
	flag_idlist_copy(&c->cohorts, &f->cohorts);
	c->description = xstrdup(f->description);
	c->owner = xstrdup(f->owner);
	return c;
}

static bool flag_idlist_equal(const struct flag_idlist *a, const struct flag_idlist *b)
{
	if (a->n != b->n)
		return false;
	for (size_t i = 0; i < a->n; i++)
		if (strcmp(a->items[i], b->items[i]) != 0)
			return false;
	return true;
}

bool flag_equal(const struct flag *a, const struct flag *b)
{
	return strcmp(a->name, b->name) == 0 && a->enabled == b->enabled && a->kill == b->kill &&
	       a->percent == b->percent && strcmp(a->salt, b->salt) == 0 &&
	       flag_idlist_equal(&a->allow, &b->allow) && flag_idlist_equal(&a->deny, &b->deny) &&
	       flag_idlist_equal(&a->cohorts, &b->cohorts) &&
	       strcmp(a->description, b->description) == 0 && strcmp(a->owner, b->owner) == 0;
}

/* Flag and cohort names: 1..FLAG_NAME_MAX bytes of [A-Za-z0-9._-], so
 * they are safe inside Redis key names, URLs and log lines. */
int flag_name_check(const char *name, char *err, size_t errlen)
{
	size_t len = strlen(name);
	if (len == 0 || len > FLAG_NAME_MAX) {
		snprintf(err, errlen, "must be 1 to %d bytes long", FLAG_NAME_MAX);
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-')) {
			snprintf(err, errlen, "may contain only letters, digits, '.', '_' and '-'");
			return -1;
		}
	}
	return 0;
}

/* User ids: 1..FLAG_USER_ID_MAX bytes of valid UTF-8 without control
 * characters (they end up in logs and in TSV-like tool output). */
int flag_user_id_check(const char *id, size_t len, char *err, size_t errlen)
{
	if (len == 0 || len > FLAG_USER_ID_MAX) {
		snprintf(err, errlen, "user id must be 1 to %d bytes long", FLAG_USER_ID_MAX);
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)id[i];
		if (c < 0x20 || c == 0x7f) {
			snprintf(err, errlen, "user id contains a control character");
			return -1;
		}
	}
	if (!utf8_valid(id, len)) {
		snprintf(err, errlen, "user id is not valid UTF-8");
		return -1;
	}
	return 0;
}

bool flag_idlist_has(const struct flag_idlist *l, const char *id)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->items[i], id) == 0)
			return true;
	return false;
}

/* Appends a copy of id unless present. Returns 1 if added, 0 if it was
 * already there. */
int flag_idlist_add(struct flag_idlist *l, const char *id)
{
	if (flag_idlist_has(l, id))
		return 0;
	l->items = xrealloc(l->items, (l->n + 1) * sizeof(char *));
	l->items[l->n++] = xstrdup(id);
	return 1;
}

/* Removes id, keeping the order of the others. Returns whether it was
 * there. */
bool flag_idlist_remove(struct flag_idlist *l, const char *id)
{
	for (size_t i = 0; i < l->n; i++) {
		if (strcmp(l->items[i], id) == 0) {
			free(l->items[i]);
			memmove(&l->items[i], &l->items[i + 1], (l->n - i - 1) * sizeof(char *));
			l->n--;
			return true;
		}
	}
	return false;
}

/*
 * Parses a rollout percentage as an operator writes it: "12.5%" (at most
 * two decimals) or a bare integer of basis points ("1250"). Anything else,
 * or a value outside 0..100%, is refused with the reason in err.
 */
int flag_percent_parse(const char *text, int *out, char *err, size_t errlen)
{
	size_t len = strlen(text);
	bool is_percent = len > 0 && text[len - 1] == '%';
	size_t end = is_percent ? len - 1 : len;
	long whole = 0, frac = 0;
	int frac_digits = 0;
	size_t i = 0;
	if (end == 0)
		goto bad;
	for (; i < end && text[i] >= '0' && text[i] <= '9'; i++) {
		whole = whole * 10 + (text[i] - '0');
		if (whole > 100000)
			goto range;
	}
	if (i == 0)
		goto bad;
	if (i < end && text[i] == '.' && is_percent) {
		for (i++; i < end && text[i] >= '0' && text[i] <= '9'; i++) {
			if (++frac_digits > 2)
				goto bad;
			frac = frac * 10 + (text[i] - '0');
		}
		if (frac_digits == 0)
			goto bad;
	}
	if (i != end)
		goto bad;
	long bp = is_percent ? whole * 100 + (frac_digits == 1 ? frac * 10 : frac) : whole;
	if (bp > FLAG_PERCENT_MAX)
		goto range;
	*out = (int)bp;
	return 0;
bad:
	snprintf(err, errlen,
		 "invalid percent '%s': give a percentage such as 12.5%% (two decimals at most) or "
		 "basis points 0..%d",
		 text, FLAG_PERCENT_MAX);
	return -1;
range:
	snprintf(err, errlen, "percent '%s' is out of range: 0%%..100%% (0..%d basis points)", text,
		 FLAG_PERCENT_MAX);
	return -1;
}

/* Formats basis points as the shortest exact percentage: 1250 -> "12.5%". */
void flag_percent_format(int bp, char *out, size_t outlen)
{
	if (bp % 100 == 0)
		snprintf(out, outlen, "%d%%", bp / 100);
	else if (bp % 10 == 0)
		snprintf(out, outlen, "%d.%d%%", bp / 100, (bp % 100) / 10);
	else
		snprintf(out, outlen, "%d.%02d%%", bp / 100, bp % 100);
}

static void flag_diff_list(const char *what, const struct flag_idlist *old, const struct flag_idlist *cur,
			   struct buf *out)
{
	for (int pass = 0; pass < 2; pass++) {
		const struct flag_idlist *from = pass ? old : cur, *against = pass ? cur : old;
		for (size_t i = 0; i < from->n; i++) {
			if (flag_idlist_has(against, from->items[i]))
				continue;
			buf_printf(out, "%s%s %c%s", out->len ? ", " : "", what, pass ? '-' : '+',
				   from->items[i]);
		}
	}
}

static void flag_diff_text(const char *what, const char *old, const char *cur, struct buf *out)
{
	if (strcmp(old, cur) != 0)
		buf_printf(out, "%s%s \"%s\" -> \"%s\"", out->len ? ", " : "", what, old, cur);
}

static void flag_diff_bool(const char *what, bool old, bool cur, struct buf *out)
{
	if (old != cur)
		buf_printf(out, "%s%s %s -> %s", out->len ? ", " : "", what, old ? "true" : "false",
			   cur ? "true" : "false");
}

/*
 * Appends to out a one-line description of what changed from old to cur
 * ("percent 10% -> 20%, kill false -> true"). old NULL means created,
 * cur NULL deleted.
 */
void flag_diff(const struct flag *old, const struct flag *cur, struct buf *out)
{
	if (old == NULL || cur == NULL) {
		buf_puts(out, old == NULL ? "created" : "deleted");
		return;
	}
	/* Built apart so the ", " separators do not depend on what out held. */
	struct buf d;
	buf_init(&d);
	flag_diff_bool("enabled", old->enabled, cur->enabled, &d);
	flag_diff_bool("kill", old->kill, cur->kill, &d);
	if (old->percent != cur->percent) {
		char a[16], b[16];
		flag_percent_format(old->percent, a, sizeof(a));
		flag_percent_format(cur->percent, b, sizeof(b));
		buf_printf(&d, "%spercent %s -> %s", d.len ? ", " : "", a, b);
	}
	flag_diff_text("salt", old->salt, cur->salt, &d);
	flag_diff_list("allow", &old->allow, &cur->allow, &d);
	flag_diff_list("deny", &old->deny, &cur->deny, &d);
	flag_diff_list("cohort", &old->cohorts, &cur->cohorts, &d);
	flag_diff_text("description", old->description, cur->description, &d);
	flag_diff_text("owner", old->owner, cur->owner, &d);
	buf_puts(out, d.len ? d.data : "no change");
	buf_free(&d);
}
