/*
 * mapping.c - turns a legacy document into the service's: keep, drop and
 * rename top-level fields, then set defaults for fields still absent.
 *
 * Everything that can be checked without a document is checked when the
 * rules are added, so that a mistake is a config error with a line, not
 * a dead-lettered user: unknown or repeated names, a field both kept and
 * dropped, a rename of a field that is not kept, two renames to one
 * name, a default that is not one JSON value. What only a document can
 * tell - a rename landing on a field the document also has, when keep
 * is empty - is an error of mapping_apply, and the worker dead-letters
 * that user with reason "mapping".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrator/migrator.h"

#define FIELD_MAX 256 /* bytes */

void mapping_init(struct mapping *m)
{
	memset(m, 0, sizeof(*m));
	m->defaults = bson_new();
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* Frees what m owns, not m. */
void mapping_free(struct mapping *m)
{
	free_names(m->keep, m->nkeep);
	free_names(m->drop, m->ndrop);
	for (size_t i = 0; i < m->nrenames; i++) {
		free(m->renames[i].from);
		free(m->renames[i].to);
	}
	free(m->renames);
	if (m->defaults)
		bson_destroy(m->defaults);
	memset(m, 0, sizeof(*m));
}

static bool in_list(char *const *names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(names[i], name) == 0)
			return true;
	return false;
}

static void add_name(char ***names, size_t *n, const char *name)
{
	*names = xrealloc(*names, (*n + 1) * sizeof(**names));
	(*names)[(*n)++] = xstrdup(name);
}

/* Whether doc has a top-level field named key (bson_has_field would
 * read a '.' in key as a path). */
static bool has_key(const bson_t *doc, const char *key)
{
	bson_iter_t it;
	return bson_iter_init_find(&it, doc, key);
}

static const struct rename_rule *rename_from(const struct mapping *m, const char *field)
{
	for (size_t i = 0; i < m->nrenames; i++)
		if (strcmp(m->renames[i].from, field) == 0)
			return &m->renames[i];
	return NULL;
}

static const struct rename_rule *rename_to(const struct mapping *m, const char *field)
{
	for (size_t i = 0; i < m->nrenames; i++)
		if (strcmp(m->renames[i].to, field) == 0)
			return &m->renames[i];
	return NULL;
}

/* Whether a legacy field reaches the result (under some name). */
static bool field_kept(const struct mapping *m, const char *field)
{
	if (in_list(m->drop, m->ndrop, field))
		return false;
	return m->nkeep == 0 || strcmp(field, "_id") == 0 || in_list(m->keep, m->nkeep, field);
}

/*
 * A top-level field name the mapping can name: 1 to 256 bytes of UTF-8
 * without control characters, not starting with '$' (an operator), no
 * '.' (a path: nested fields are not supported) and no ':' (the
 * separator of rename and default rules). Returns 0, or -1 with why.
 */
int mapping_field_check(const char *name, char *why, size_t whylen)
{
	size_t len = strlen(name);
	if (len == 0 || len > FIELD_MAX) {
		snprintf(why, whylen, "a field name is 1 to %d bytes", FIELD_MAX);
		return -1;
	}
	if (!utf8_valid(name, len)) {
		snprintf(why, whylen, "field name '%s' is not UTF-8", name);
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c < 0x20 || c == 0x7f) {
			snprintf(why, whylen, "field name '%s' has a control character", name);
			return -1;
		}
	}
	if (name[0] == '$') {
		snprintf(why, whylen, "field name '%s' starts with '$'", name);
		return -1;
	}
	if (strchr(name, '.') != NULL) {
		snprintf(why, whylen, "field name '%s' has a '.': nested fields are not supported", name);
		return -1;
	}
	if (strchr(name, ':') != NULL) {
		snprintf(why, whylen, "field name '%s' has a ':'", name);
		return -1;
	}
	return 0;
}

/* Adds a field to keep. Add every keep before any drop or rename. */
int mapping_add_keep(struct mapping *m, const char *field, char *why, size_t whylen)
{
	if (mapping_field_check(field, why, whylen) < 0)
		return -1;
	if (in_list(m->keep, m->nkeep, field)) {
		snprintf(why, whylen, "'%s' is listed twice", field);
		return -1;
	}
	add_name(&m->keep, &m->nkeep, field);
	return 0;
}

/* Adds a field to drop; it may not be kept, and with a keep list it
 * must be _id (the one field kept without being listed). */
int mapping_add_drop(struct mapping *m, const char *field, char *why, size_t whylen)
{
	if (mapping_field_check(field, why, whylen) < 0)
		return -1;
	if (in_list(m->drop, m->ndrop, field)) {
		snprintf(why, whylen, "'%s' is listed twice", field);
		return -1;
	}
	if (in_list(m->keep, m->nkeep, field)) {
		snprintf(why, whylen, "'%s' is both kept and dropped", field);
		return -1;
	}
	if (m->nkeep > 0 && strcmp(field, "_id") != 0) {
		snprintf(why, whylen, "'%s' is not kept anyway: with a keep list, only _id can be dropped", field);
		return -1;
	}
	add_name(&m->drop, &m->ndrop, field);
	return 0;
}

/* Splits "left:right" at its first ':' into two new strings. */
static int split_rule(const char *rule, char **left, char **right, char *why, size_t whylen)
{
	const char *colon = strchr(rule, ':');
	if (colon == NULL) {
		snprintf(why, whylen, "'%s' has no ':'", rule);
		return -1;
	}
	*left = xstrndup(rule, (size_t)(colon - rule));
	*right = xstrdup(colon + 1);
	return 0;
}

/* Adds "old:new": old must be kept and renamed once, new claimed once. */
int mapping_add_rename(struct mapping *m, const char *rule, char *why, size_t whylen)
{
	char *from = NULL, *to = NULL;
	char what[FIELD_MAX];
	if (split_rule(rule, &from, &to, why, whylen) < 0)
		return -1;
	snprintf(what, sizeof(what), "rename '%s'", rule);
	if (mapping_field_check(from, why, whylen) < 0 || mapping_field_check(to, why, whylen) < 0) {
		size_t n = strlen(why);
		snprintf(why + n, whylen - n, " (in %s; write it old:new)", what);
	} else if (strcmp(from, to) == 0) {
		snprintf(why, whylen, "%s renames a field to itself", what);
	} else if (!field_kept(m, from)) {
		snprintf(why, whylen, "%s: '%s' is %s", what, from,
			 in_list(m->drop, m->ndrop, from) ? "dropped" : "not kept");
	} else if (rename_from(m, from) != NULL) {
		snprintf(why, whylen, "%s: '%s' is renamed twice", what, from);
	} else if (rename_to(m, to) != NULL) {
		snprintf(why, whylen, "%s: '%s' is already the new name of '%s'", what, to, rename_to(m, to)->from);
	} else {
		m->renames = xrealloc(m->renames, (m->nrenames + 1) * sizeof(*m->renames));
		m->renames[m->nrenames++] = (struct rename_rule){ from, to };
		return 0;
	}
	free(from);
	free(to);
	return -1;
}

/*
 * Adds "field:json-value": field of the result, set to the value where a
 * document lacks it. The value must be one strict JSON value
 * (common/json.c), which libbson then reads as MongoDB extended JSON, so
 * {"$date": "2024-01-01T00:00:00Z"} is a date. Both read it wrapped as
 * {"v":VALUE}: jsmn's strict mode takes no bare top-level literal, and
 * an object of exactly one member proves the value was one value.
 */
int mapping_add_default(struct mapping *m, const char *rule, char *why, size_t whylen)
{
	char *field = NULL, *value = NULL;
	struct json_doc doc = { 0 };
	struct buf wrapped;
	bson_t *parsed = NULL;
	bson_error_t error;
	bson_iter_t it;
	char jerr[128];
	int rc = -1;
	if (split_rule(rule, &field, &value, why, whylen) < 0)
		return -1;
	buf_init(&wrapped);
	buf_printf(&wrapped, "{\"v\":%s}", value);
	if (mapping_field_check(field, why, whylen) < 0)
		goto out;
	if (has_key(m->defaults, field)) {
		snprintf(why, whylen, "default for '%s' given twice", field);
		goto out;
	}
	if (rename_from(m, field) != NULL && rename_to(m, field) == NULL) {
		snprintf(why, whylen, "default for '%s', which is renamed to '%s': give it for the new name",
			 field, rename_from(m, field)->to);
		goto out;
	}
	if (json_parse(&doc, wrapped.data, wrapped.len, jerr, sizeof(jerr)) < 0) {
		snprintf(why, whylen, "default for '%s': '%s' is not a JSON value (%s)", field, value, jerr);
		goto out;
	}
	if (doc.tok[0].size != 1) {
		snprintf(why, whylen, "default for '%s': '%s' is more than one JSON value", field, value);
		goto out;
	}
	parsed = bson_new_from_json((const uint8_t *)wrapped.data, (ssize_t)wrapped.len, &error);
	if (parsed == NULL || !bson_iter_init_find(&it, parsed, "v")) {
		snprintf(why, whylen, "default for '%s': %s", field, parsed ? "no value" : error.message);
		goto out;
	}
	bson_append_iter(m->defaults, field, -1, &it);
	rc = 0;
out:
	if (parsed)
		bson_destroy(parsed);
	json_doc_free(&doc);
	buf_free(&wrapped);
	free(field);
	free(value);
	return rc;
}

/* The checks that need every rule: with a keep list, a rename may not
 * land on a kept field that keeps its name. */
int mapping_finish(const struct mapping *m, char *why, size_t whylen)
{
	for (size_t i = 0; i < m->nrenames && m->nkeep > 0; i++) {
		const char *to = m->renames[i].to;
		if (field_kept(m, to) && rename_from(m, to) == NULL) {
			snprintf(why, whylen, "rename '%s:%s': '%s' is kept too; drop or rename it", m->renames[i].from,
				 to, to);
			return -1;
		}
	}
	return 0;
}

/* The name a legacy field has in the result, or NULL if it is left out. */
const char *mapping_output_name(const struct mapping *m, const char *field)
{
	if (!field_kept(m, field))
		return NULL;
	const struct rename_rule *r = rename_from(m, field);
	return r ? r->to : field;
}

/*
 * Writes the mapped copy of in to out (an initialized, empty document).
 * Returns 0, or -1 with why when the result would have a field twice.
 */
int mapping_apply(const struct mapping *m, const bson_t *in, bson_t *out, char *why, size_t whylen)
{
	bson_iter_t it;
	if (!bson_iter_init(&it, in)) {
		snprintf(why, whylen, "the legacy document is not valid BSON");
		return -1;
	}
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);
		const char *name = mapping_output_name(m, key);
		if (name == NULL)
			continue;
		if (has_key(out, name)) {
			const struct rename_rule *r = rename_to(m, name);
			if (r != NULL)
				snprintf(why, whylen, "renaming '%s' to '%s': the document has '%s' too", r->from, name,
					 name);
			else
				snprintf(why, whylen, "field '%s' appears twice in the legacy document", key);
			return -1;
		}
		bson_append_iter(out, name, -1, &it);
	}
	if (!bson_iter_init(&it, m->defaults))
		return 0;
	while (bson_iter_next(&it))
		if (!has_key(out, bson_iter_key(&it)))
			bson_append_iter(out, bson_iter_key(&it), -1, &it);
	return 0;
}
