/*
 * codec.c - the flag's JSON form, as stored in Redis and printed by
 * `cutoverctl --json`:
 *
 *   {"name":"users-read","enabled":true,"kill":false,"percent":1250,
 *    "salt":"users-read","allow":["u1"],"deny":[],"cohorts":["beta"],
 *    "description":"","owner":"team-users"}
 *
 * Decoding is strict - unknown fields, wrong types, duplicate keys or ids,
 * out-of-range values and bad UTF-8 are errors naming the field - so that
 * a typo in a hand edit never becomes a silent default on the request
 * path. Only "name" is required; the rest default as in flag_new().
 * Encoding writes every field in the order above, so encode(decode(x))
 * reproduces any canonical x byte for byte.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flags.h"

enum flag_field {
	FIELD_NAME,
	FIELD_ENABLED,
	FIELD_KILL,
	FIELD_PERCENT,
	FIELD_SALT,
	FIELD_ALLOW,
	FIELD_DENY,
	FIELD_COHORTS,
	FIELD_DESCRIPTION,
	FIELD_OWNER,
	FIELD_COUNT
};

static const char *const flag_field_names[FIELD_COUNT] = {
	"name", "enabled", "kill", "percent", "salt", "allow", "deny", "cohorts", "description", "owner",
};

/* Decodes a string no longer than max bytes into *dst (replacing it). */
static int decode_text(const struct json_doc *doc, int i, const char *field, size_t max, char **dst,
		       char *err, size_t errlen)
{
	char *s;
	size_t len;
	const char *why;
	if (json_get_string(doc, i, &s, &len, &why) < 0) {
		snprintf(err, errlen, "field '%s': %s", field, why);
		return -1;
	}
	if (strlen(s) != len || len > max) {
		if (strlen(s) != len)
			snprintf(err, errlen, "field '%s': contains a NUL character", field);
		else
			snprintf(err, errlen, "field '%s': is longer than %zu bytes", field, max);
		free(s);
		return -1;
	}
	free(*dst);
	*dst = s;
	return 0;
}

static int compare_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reports the first id that appears twice; sorting a copy of the pointers
 * keeps this O(n log n) for lists of FLAG_LIST_MAX ids. */
static int check_unique(const struct flag_idlist *l, const char *field, char *err, size_t errlen)
{
	if (l->n < 2)
		return 0;
	char **sorted = xmalloc(l->n * sizeof(char *));
	memcpy(sorted, l->items, l->n * sizeof(char *));
	qsort(sorted, l->n, sizeof(char *), compare_strings);
	int rc = 0;
	for (size_t i = 1; i < l->n; i++) {
		if (strcmp(sorted[i - 1], sorted[i]) == 0) {
			snprintf(err, errlen, "field '%s': duplicate entry '%s'", field, sorted[i]);
			rc = -1;
			break;
		}
	}
	free(sorted);
	return rc;
}

/* Decodes an array of user ids (or of cohort names) into *l. */
static int decode_list(const struct json_doc *doc, int i, const char *field, bool names, size_t max,
		       struct flag_idlist *l, char *err, size_t errlen)
{
	const struct json_token *t = &doc->tok[i];
	if (t->type != JSON_ARRAY) {
		snprintf(err, errlen, "field '%s': must be an array of strings", field);
		return -1;
	}
	if ((size_t)t->size > max) {
		snprintf(err, errlen, "field '%s': more than %zu entries", field, max);
		return -1;
	}
	flag_idlist_free(l);
	l->items = xcalloc((size_t)t->size + 1, sizeof(char *));
	char why[FLAG_ERR_MAX];
	for (int k = 0, v = i + 1; k < t->size; k++, v = json_next(doc, v)) {
		char *s = NULL;
		if (decode_text(doc, v, field, FLAG_USER_ID_MAX, &s, err, errlen) < 0)
			return -1;
		l->items[l->n++] = s;
		int bad = names ? flag_name_check(s, why, sizeof(why))
				: flag_user_id_check(s, strlen(s), why, sizeof(why));
		if (bad) {
			snprintf(err, errlen, "field '%s': entry %d %s", field, k, why);
			return -1;
		}
	}
	return check_unique(l, field, err, errlen);
}

static int decode_field(const struct json_doc *doc, int v, enum flag_field field, struct flag *f,
			char *err, size_t errlen)
{
	const char *name = flag_field_names[field];
	long long n;
	char why[FLAG_ERR_MAX];
	switch (field) {
	case FIELD_NAME:
		if (decode_text(doc, v, name, FLAG_NAME_MAX, &f->name, err, errlen) < 0)
			return -1;
		if (flag_name_check(f->name, why, sizeof(why)) < 0) {
			snprintf(err, errlen, "field 'name': %s", why);
			return -1;
		}
		return 0;
	case FIELD_ENABLED:
	case FIELD_KILL:
		if (json_get_bool(doc, v, field == FIELD_KILL ? &f->kill : &f->enabled) < 0) {
			snprintf(err, errlen, "field '%s': must be true or false", name);
			return -1;
		}
		return 0;
	case FIELD_PERCENT:
		if (json_get_int(doc, v, &n) < 0 || n < 0 || n > FLAG_PERCENT_MAX) {
			snprintf(err, errlen, "field 'percent': must be an integer in 0..%d (basis points)",
				 FLAG_PERCENT_MAX);
			return -1;
		}
		f->percent = (int)n;
		return 0;
	case FIELD_SALT:
		return decode_text(doc, v, name, FLAG_SALT_MAX, &f->salt, err, errlen);
	case FIELD_ALLOW:
		return decode_list(doc, v, name, false, FLAG_LIST_MAX, &f->allow, err, errlen);
	case FIELD_DENY:
		return decode_list(doc, v, name, false, FLAG_LIST_MAX, &f->deny, err, errlen);
	case FIELD_COHORTS:
		return decode_list(doc, v, name, true, FLAG_COHORTS_MAX, &f->cohorts, err, errlen);
	case FIELD_DESCRIPTION:
		return decode_text(doc, v, name, FLAG_DESCRIPTION_MAX, &f->description, err, errlen);
	case FIELD_OWNER:
		return decode_text(doc, v, name, FLAG_OWNER_MAX, &f->owner, err, errlen);
	case FIELD_COUNT:
		break;
	}
	return -1;
}

/*
 * Decodes one flag from json[0..len). Returns a new flag (caller frees
 * with flag_free), or NULL with err naming the field and the reason.
 */
struct flag *flag_decode(const char *json, size_t len, char *err, size_t errlen)
{
	struct json_doc doc;
	char why[FLAG_ERR_MAX];
	if (json_parse(&doc, json, len, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "invalid JSON: %s", why);
		return NULL;
	}
	struct flag *f = flag_new("");
	free(f->name);
	f->name = NULL;
	bool seen[FIELD_COUNT] = { false };
	if (doc.tok[0].type != JSON_OBJECT) {
		snprintf(err, errlen, "a flag must be a JSON object");
		goto fail;
	}
	int i = 1;
	for (int m = 0; m < doc.tok[0].size; m++) {
		const struct json_token *key = &doc.tok[i];
		int field = 0;
		while (field < FIELD_COUNT && !json_key_is(&doc, i, flag_field_names[field]))
			field++;
		if (field == FIELD_COUNT) {
			snprintf(err, errlen, "unknown field '%.*s'", key->end - key->start > 64 ? 64 : key->end - key->start,
				 json + key->start);
			goto fail;
		}
		if (seen[field]) {
			snprintf(err, errlen, "duplicate field '%s'", flag_field_names[field]);
			goto fail;
		}
		seen[field] = true;
		if (decode_field(&doc, i + 1, (enum flag_field)field, f, err, errlen) < 0)
			goto fail;
		i = json_next(&doc, i + 1);
	}
	if (!seen[FIELD_NAME]) {
		snprintf(err, errlen, "field 'name': is required");
		goto fail;
	}
	if (!seen[FIELD_SALT]) {
		free(f->salt);
		f->salt = xstrdup(f->name);
	}
	json_doc_free(&doc);
	return f;
fail:
	json_doc_free(&doc);
	flag_free(f);
	return NULL;
}

static void encode_list(struct buf *out, const char *field, const struct flag_idlist *l)
{
	buf_printf(out, ",\"%s\":[", field);
	for (size_t i = 0; i < l->n; i++) {
		if (i > 0)
			buf_putc(out, ',');
		json_put_string(out, l->items[i], strlen(l->items[i]));
	}
	buf_putc(out, ']');
}

static void encode_text(struct buf *out, const char *field, const char *s)
{
	buf_printf(out, ",\"%s\":", field);
	json_put_string(out, s, strlen(s));
}

/* Appends the canonical JSON form of f to out. */
void flag_encode(const struct flag *f, struct buf *out)
{
	buf_puts(out, "{\"name\":");
	json_put_string(out, f->name, strlen(f->name));
	buf_printf(out, ",\"enabled\":%s,\"kill\":%s,\"percent\":%d", f->enabled ? "true" : "false",
		   f->kill ? "true" : "false", f->percent);
	encode_text(out, "salt", f->salt);
	encode_list(out, "allow", &f->allow);
	encode_list(out, "deny", &f->deny);
	encode_list(out, "cohorts", &f->cohorts);
	encode_text(out, "description", f->description);
	encode_text(out, "owner", f->owner);
	buf_putc(out, '}');
}
