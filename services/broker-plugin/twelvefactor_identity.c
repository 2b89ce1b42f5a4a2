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
 * Options (per listener): plugin_opt_device_ca and plugin_opt_service_ca, the
 * two CA certificates (PEM); plugin_opt_device_suffixes, the client id suffixes
 * a device may use on this listener, comma-separated (empty on the service
 * listener, where no device certificate is accepted anyway). Extended authentication (MQTT 5 AUTH) is not offered: a
 * client asking for it is refused by mosquitto itself.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_CN 64
#define MAX_SUFFIXES 4
#define MAX_SUFFIX 16

/* One per listener (per_listener_settings loads the plugin once for each). */
struct identity_cas {
	mosquitto_plugin_id_t *plugin_id;
	X509 *device_ca;
	X509 *service_ca;
	int suffix_count;
	char suffixes[MAX_SUFFIXES][MAX_SUFFIX + 1];
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
		rc = is_device_id(c, id, cn)
			? MOSQ_ERR_SUCCESS : refuse(id, cn, "not a client id of this device on this listener");
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
	X509_free(c->device_ca);
	X509_free(c->service_ca);
	free(c);
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *opts, int opt_count)
{
	const char *device_ca = NULL, *service_ca = NULL, *suffixes = "";
	struct identity_cas *c;
	int i, rc;

	for(i = 0; i < opt_count; i++){
		if(!strcmp(opts[i].key, "device_ca")){
			device_ca = opts[i].value;
		}else if(!strcmp(opts[i].key, "service_ca")){
			service_ca = opts[i].value;
		}else if(!strcmp(opts[i].key, "device_suffixes")){
			suffixes = opts[i].value;
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
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, c);
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
		free_cas(c);
	}
	return MOSQ_ERR_SUCCESS;
}
