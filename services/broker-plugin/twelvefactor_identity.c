/*
 * twelvefactor_identity: a mosquitto 2.0 plugin that binds each client id to the
 * certificate that presents it.
 *
 * mosquitto's use_identity_as_username takes the username from the certificate
 * but accepts any client id, so a device could connect as "solution-1" or as
 * another device's "<id>-mgmt", throw that client off and, with clean start,
 * wipe its persistent session (docs/threat-model.md). mosquitto skips the
 * username/password check entirely when use_identity_as_username is on, so the
 * binding cannot be expressed with it; this plugin does the whole check
 * instead, on the basic-auth event every CONNECT goes through:
 *
 *   - the client must present a certificate (the listeners require one, and
 *     TLS has already verified it against the listener's CA);
 *   - signed by the device CA: the client id must be "<CN><suffix>" with one of
 *     the listener's device suffixes ("-mgmt" on the management listener,
 *     "-sol" on the solution listener), so a device holds one session on each;
 *   - signed by the service CA: the client id must be "<CN>-<digits>"
 *     (a device id can never end that way and a device CN is never a service
 *     name: twelvefactor-pki refuses both);
 *   - a username, if the client sends one, must equal the CN; the plugin then
 *     sets the username to the CN, which the ACL files' %u patterns use.
 *
 * Revocation (plugin_opt_crl, the device CA's CRL in PEM, on the device
 * listeners): a device certificate on the CRL is refused at CONNECT. On the
 * broker's reload (SIGHUP, the MOSQ_EVT_RELOAD event; mosquitto 2.0.11 never
 * sends MOSQ_EVT_TICK to plugins) the file is read again, its signature
 * checked with the device CA (a CRL that does not verify is ignored and the
 * old one kept), and every connected device whose certificate is now on it is
 * disconnected (its will is sent). For that the plugin remembers the serial
 * number of the certificate each device CN last connected with. mosquitto's
 * own "crlfile", read at start and on the same SIGHUP, refuses the TLS
 * handshake too, but never drops a client already connected
 * (docs/decisions.md, "Revocation: the broker's plugin disconnects").
 *
 * Options (per listener): plugin_opt_device_ca and plugin_opt_service_ca, the
 * two CA certificates (PEM); plugin_opt_device_suffixes, the client id suffixes
 * a device may use on this listener, comma-separated (empty on the service
 * listener, where no device certificate is accepted anyway); plugin_opt_crl;
 * plugin_opt_tls_session_lifetime, how long a TLS session may be resumed, in
 * seconds (tls_sessions.c: it applies to every listener of the broker).
 * Extended authentication (MQTT 5 AUTH) is not offered: a client asking for it
 * is refused by mosquitto itself.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "tls_sessions.h"

#define MAX_CN 64
#define MAX_SUFFIXES 4
#define MAX_SUFFIX 16

/* A device CN and the serial number of the certificate it last connected with. */
struct accepted {
	char cn[MAX_CN + 1];
	ASN1_INTEGER *serial;
};

/* One per listener (per_listener_settings loads the plugin once for each). */
struct identity_cas {
	mosquitto_plugin_id_t *plugin_id;
	X509 *device_ca;
	X509 *service_ca;
	int suffix_count;
	char suffixes[MAX_SUFFIXES][MAX_SUFFIX + 1];
	/* revocation */
	char *crl_path;
	X509_CRL *crl;
	/* accepted devices: open addressing by CN, never more than half full */
	struct accepted *seen;
	size_t seen_cap;
	size_t seen_count;
};

static X509 *load_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *cert;

	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, "twelvefactor_identity: cannot open %s", path);
		return NULL;
	}
	cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if(!cert){
		mosquitto_log_printf(MOSQ_LOG_ERR, "twelvefactor_identity: %s holds no PEM certificate", path);
	}
	return cert;
}

/* The certificate's common name; 0 if it has exactly one of at most MAX_CN bytes. */
static int common_name(X509 *cert, char *out, size_t size)
{
	X509_NAME *subject = X509_get_subject_name(cert);
	int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
	ASN1_STRING *data;
	int len;

	if(idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0){
		return -1;
	}
	data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
	len = ASN1_STRING_length(data);
	if(len <= 0 || (size_t)len >= size || memchr(ASN1_STRING_get0_data(data), 0, (size_t)len)){
		return -1;
	}
	memcpy(out, ASN1_STRING_get0_data(data), (size_t)len);
	out[len] = '\0';
	return 0;
}

static int has_suffix(const char *id, const char *cn, const char *suffix)
{
	size_t n = strlen(cn);
	return strncmp(id, cn, n) == 0 && strcmp(id + n, suffix) == 0;
}

static int is_device_id(const struct identity_cas *c, const char *id, const char *cn)
{
	int i;

	for(i = 0; i < c->suffix_count; i++){
		if(has_suffix(id, cn, c->suffixes[i])){
			return 1;
		}
	}
	return 0;
}

/* "-mgmt,-sol" into c->suffixes; 0 on success. */
static int parse_suffixes(struct identity_cas *c, const char *list)
{
	const char *p = list, *end;
	size_t n;

	while(*p){
		end = strchr(p, ',');
		n = end ? (size_t)(end - p) : strlen(p);
		if(n == 0 || n > MAX_SUFFIX || c->suffix_count == MAX_SUFFIXES || p[0] != '-'){
			mosquitto_log_printf(MOSQ_LOG_ERR,
					"twelvefactor_identity: bad plugin_opt_device_suffixes \"%s\"", list);
			return -1;
		}
		memcpy(c->suffixes[c->suffix_count], p, n);
		c->suffixes[c->suffix_count++][n] = '\0';
		p = end ? end + 1 : p + n;
	}
	return 0;
}

static int is_service_id(const char *id, const char *cn)
{
	size_t n = strlen(cn);
	const char *p;

	if(strncmp(id, cn, n) != 0 || id[n] != '-' || id[n + 1] == '\0'){
		return 0;
	}
	for(p = id + n + 1; *p; p++){
		if(*p < '0' || *p > '9'){
			return 0;
		}
	}
	return strlen(id + n + 1) <= 9;
}

static int refuse(const char *id, const char *cn, const char *why)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"twelvefactor_identity: refused client id \"%.80s\" for certificate CN \"%s\": %s",
			id ? id : "", cn, why);
	return MOSQ_ERR_AUTH;
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 14695981039346656037ULL;

	while(*s){
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	}
	return h;
}

/* The slot of `cn` in `table` (of `cap` slots, a power of two): its own or the empty one. */
static struct accepted *slot_of(struct accepted *table, size_t cap, const char *cn)
{
	size_t i = (size_t)fnv1a(cn) & (cap - 1);

	while(table[i].cn[0] && strcmp(table[i].cn, cn) != 0){
		i = (i + 1) & (cap - 1);
	}
	return &table[i];
}

/* Remember that `cn` connected with `serial`; 0 on success. */
static int remember(struct identity_cas *c, const char *cn, const ASN1_INTEGER *serial)
{
	struct accepted *slot, *bigger;
	size_t i, cap;

	if((c->seen_count + 1) * 2 > c->seen_cap){
		cap = c->seen_cap ? c->seen_cap * 2 : 256;
		bigger = calloc(cap, sizeof(*bigger));
		if(!bigger){
			return -1;
		}
		for(i = 0; i < c->seen_cap; i++){
			if(c->seen[i].cn[0]){
				*slot_of(bigger, cap, c->seen[i].cn) = c->seen[i];
			}
		}
		free(c->seen);
		c->seen = bigger;
		c->seen_cap = cap;
	}
	slot = slot_of(c->seen, c->seen_cap, cn);
	if(!slot->cn[0]){
		strcpy(slot->cn, cn);
		c->seen_count++;
	}
	ASN1_INTEGER_free(slot->serial);
	slot->serial = ASN1_INTEGER_dup(serial);
	return slot->serial ? 0 : -1;
}

static int on_crl(const struct identity_cas *c, const ASN1_INTEGER *serial)
{
	X509_REVOKED *entry;

	/* const-cast: OpenSSL 3 takes a non-const serial but only reads it */
	return c->crl && X509_CRL_get0_by_serial(c->crl, &entry, (ASN1_INTEGER *)serial) == 1;
}

/* Read the CRL file; keep it if it is signed by the device CA. 0 on success. */
static int load_crl(struct identity_cas *c)
{
	FILE *f = fopen(c->crl_path, "r");
	X509_CRL *crl;
	EVP_PKEY *ca_key;

	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, "twelvefactor_identity: cannot open CRL %s", c->crl_path);
		return -1;
	}
	crl = PEM_read_X509_CRL(f, NULL, NULL, NULL);
	fclose(f);
	ca_key = X509_get0_pubkey(c->device_ca);
	if(!crl || !ca_key || X509_CRL_verify(crl, ca_key) != 1){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"twelvefactor_identity: %s is not a CRL signed by the device CA: ignored", c->crl_path);
		X509_CRL_free(crl);
		return -1;
	}
	X509_CRL_free(c->crl);
	c->crl = crl;
	return 0;
}

/* SIGHUP: the CRL is read again and the connected devices now on it are disconnected. */
static int on_reload(int event, void *event_data, void *userdata)
{
	struct identity_cas *c = userdata;
	size_t i;
	int kicked = 0;

	(void)event;
	(void)event_data;
	if(load_crl(c)){
		return MOSQ_ERR_SUCCESS;
	}
	for(i = 0; i < c->seen_cap; i++){
		if(c->seen[i].cn[0] && on_crl(c, c->seen[i].serial)){
			/* the username is the CN (set below): all of the device's sessions go */
			if(mosquitto_kick_client_by_username(c->seen[i].cn, true) == MOSQ_ERR_SUCCESS){
				kicked++;
			}
		}
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"twelvefactor_identity: read %s again: %d revoked certificates; disconnected "
			"the %d devices last seen with one of them",
			c->crl_path, sk_X509_REVOKED_num(X509_CRL_get_REVOKED(c->crl)), kicked);
	return MOSQ_ERR_SUCCESS;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct identity_cas *c = userdata;
	X509 *cert;
	const char *id;
	char cn[MAX_CN + 1];
	int rc;

	(void)event;
	cert = mosquitto_client_certificate(ed->client);
	if(!cert){
		return refuse(mosquitto_client_id(ed->client), "", "no client certificate");
	}
	id = mosquitto_client_id(ed->client);
	if(common_name(cert, cn, sizeof(cn))){
		X509_free(cert);
		return refuse(id, "", "certificate has no single usable CN");
	}
	if(!id){
		rc = refuse(id, cn, "no client id");
	}else if(ed->username && strcmp(ed->username, cn) != 0){
		rc = refuse(id, cn, "username differs from the certificate's CN");
	}else if(X509_check_issued(c->device_ca, cert) == X509_V_OK){
		if(on_crl(c, X509_get0_serialNumber(cert))){
			rc = refuse(id, cn, "the certificate is revoked");
		}else if(!is_device_id(c, id, cn)){
			rc = refuse(id, cn, "not a client id of this device on this listener");
		}else{
			rc = remember(c, cn, X509_get0_serialNumber(cert)) ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
		}
	}else if(X509_check_issued(c->service_ca, cert) == X509_V_OK){
		rc = is_service_id(id, cn)
			? MOSQ_ERR_SUCCESS : refuse(id, cn, "a service may use only <CN>-<number>");
	}else{
		rc = refuse(id, cn, "certificate signed by neither the device nor the service CA");
	}
	X509_free(cert);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_set_username(ed->client, cn);
	}
	return rc;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

static void free_cas(struct identity_cas *c)
{
	size_t i;

	for(i = 0; i < c->seen_cap; i++){
		ASN1_INTEGER_free(c->seen[i].serial);
	}
	free(c->seen);
	X509_CRL_free(c->crl);
	free(c->crl_path);
	X509_free(c->device_ca);
	X509_free(c->service_ca);
	free(c);
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *opts, int opt_count)
{
	const char *device_ca = NULL, *service_ca = NULL, *suffixes = "", *crl = NULL;
	struct identity_cas *c;
	int i, rc;

	for(i = 0; i < opt_count; i++){
		if(!strcmp(opts[i].key, "device_ca")){
			device_ca = opts[i].value;
		}else if(!strcmp(opts[i].key, "service_ca")){
			service_ca = opts[i].value;
		}else if(!strcmp(opts[i].key, "device_suffixes")){
			suffixes = opts[i].value;
		}else if(!strcmp(opts[i].key, "crl")){
			crl = opts[i].value;
		}else if(!strcmp(opts[i].key, "tls_session_lifetime")){
			if(tls_sessions_configure(opts[i].value)){
				return MOSQ_ERR_INVAL;
			}
		}
	}
	if(!device_ca || !service_ca){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"twelvefactor_identity: plugin_opt_device_ca and plugin_opt_service_ca are required");
		return MOSQ_ERR_INVAL;
	}
	c = calloc(1, sizeof(*c));
	if(!c){
		return MOSQ_ERR_NOMEM;
	}
	c->plugin_id = identifier;
	if(parse_suffixes(c, suffixes)){
		free(c);
		return MOSQ_ERR_INVAL;
	}
	c->device_ca = load_cert(device_ca);
	c->service_ca = load_cert(service_ca);
	if(!c->device_ca || !c->service_ca){
		free_cas(c);
		return MOSQ_ERR_INVAL;
	}
	if(crl){
		/* a broker told to check revocation does not start without a good CRL */
		c->crl_path = strdup(crl);
		if(!c->crl_path || load_crl(c)){
			free_cas(c);
			return MOSQ_ERR_INVAL;
		}
	}
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, c);
	if(rc == MOSQ_ERR_SUCCESS && crl){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, on_reload, NULL, c);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_callback_unregister(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		}
	}
	if(rc != MOSQ_ERR_SUCCESS){
		free_cas(c);
		return rc;
	}
	*userdata = c;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	struct identity_cas *c = userdata;

	(void)opts;
	(void)opt_count;
	if(c){
		mosquitto_callback_unregister(c->plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		if(c->crl_path){
			mosquitto_callback_unregister(c->plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
		}
		free_cas(c);
	}
	return MOSQ_ERR_SUCCESS;
}
