/* A stand-in libnvidia-ml.so.1 for the tests of guest_agent/nvml.py: the NVML calls GPU attestation
 * uses, with the structs laid out as in NVIDIA's nvml.h (API 12), serving evidence from files.
 *
 * Environment (read on every call):
 *   NVML_STANDIN_REPORT  file: the SPDM attestation report (binary) every GPU returns
 *   NVML_STANDIN_CHAIN   file: the attestation certificate chain (PEM) every GPU returns; a "%u"
 *                        in it is GPU i's index (one chain per device)
 *   NVML_STANDIN_SIGNER  command: instead of NVML_STANDIN_REPORT, run `<command> --index <i>
 *                        --nonce <64 hex>` and return its stdout (the TEST GPU of
 *                        tdxattest.testing.testgpu, which signs over any nonce)
 *   NVML_STANDIN_STATE   directory: writes nonce-<i>.bin (the nonce GPU i was asked for) and
 *                        ready (the ready state last set); reads ready back
 *   NVML_STANDIN_GPUS    GPU count (default 1)
 *   NVML_STANDIN_CC      "environment,ccFeature,devToolsMode" (default "2,1,0": prod, on, off)
 *   NVML_STANDIN_FAIL    name of one call that fails with NVML_ERROR_UNKNOWN (999)
 *   NVML_STANDIN_READY_STICKS  "0": setting the ready state succeeds but reads back as not ready
 * It is test scaffolding: it signs nothing itself; a file report is a real GPU's, so it verifies only
 * for the nonce that GPU was given. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CERT_CHAIN_SIZE 0x1000
#define ATTESTATION_CERT_CHAIN_SIZE 0x1400
#define NONCE_SIZE 0x20
#define REPORT_SIZE 0x2000
#define CEC_REPORT_SIZE 0x1000

typedef struct { unsigned int certChainSize, attestationCertChainSize;
                 unsigned char certChain[CERT_CHAIN_SIZE];
                 unsigned char attestationCertChain[ATTESTATION_CERT_CHAIN_SIZE]; } gpu_certificate;
typedef struct { unsigned int isCecAttestationReportPresent, attestationReportSize, cecAttestationReportSize;
                 unsigned char nonce[NONCE_SIZE];
                 unsigned char attestationReport[REPORT_SIZE];
                 unsigned char cecAttestationReport[CEC_REPORT_SIZE]; } gpu_report;
typedef struct { unsigned int environment, ccFeature, devToolsMode; } cc_state;

static int initialized;

static int fails(const char *call) {
    const char *f = getenv("NVML_STANDIN_FAIL");
    return f && strcmp(f, call) == 0;
}

static long read_file(const char *env, unsigned char *buf, long cap) {
    const char *path = getenv(env);
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return -1;
    long n = (long)fread(buf, 1, (size_t)cap, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    return more ? -1 : n;
}

static long read_path(const char *path, unsigned char *buf, long cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long n = (long)fread(buf, 1, (size_t)cap, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    return more ? -1 : n;
}

static void state_path(char *out, size_t cap, const char *name) {
    const char *dir = getenv("NVML_STANDIN_STATE");
    snprintf(out, cap, "%s/%s", dir ? dir : ".", name);
}

static unsigned int gpu_count(void) {
    const char *n = getenv("NVML_STANDIN_GPUS");
    return n ? (unsigned int)atoi(n) : 1;
}

#define CHECK(call) do { if (!initialized) return 1; if (fails(call)) return 999; } while (0)

const char *nvmlErrorString(int rc) {
    switch (rc) { case 0: return "Success"; case 1: return "Uninitialized"; case 2: return "Invalid Argument";
                  default: return "Unknown Error"; }
}

int nvmlInit_v2(void) { if (fails("nvmlInit_v2")) return 999; initialized = 1; return 0; }
int nvmlShutdown(void) { initialized = 0; return 0; }

int nvmlDeviceGetCount_v2(unsigned int *count) { CHECK("nvmlDeviceGetCount_v2"); *count = gpu_count(); return 0; }

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **handle) {
    CHECK("nvmlDeviceGetHandleByIndex_v2");
    if (index >= gpu_count()) return 2;
    *handle = (void *)(size_t)(0x1000 + index);   /* opaque to the caller; we decode the index */
    return 0;
}

int nvmlSystemGetDriverVersion(char *buf, unsigned int len) {
    CHECK("nvmlSystemGetDriverVersion");
    const char *v = getenv("NVML_STANDIN_DRIVER");
    snprintf(buf, len, "%s", v ? v : "550.90.07");
    return 0;
}

int nvmlDeviceGetVbiosVersion(void *handle, char *buf, unsigned int len) {
    CHECK("nvmlDeviceGetVbiosVersion");
    (void)handle;
    const char *v = getenv("NVML_STANDIN_VBIOS");
    snprintf(buf, len, "%s", v ? v : "96.00.9F.00.01");
    return 0;
}

int nvmlSystemGetConfComputeState(cc_state *s) {
    CHECK("nvmlSystemGetConfComputeState");
    const char *v = getenv("NVML_STANDIN_CC");
    s->environment = 2; s->ccFeature = 1; s->devToolsMode = 0;
    if (v) sscanf(v, "%u,%u,%u", &s->environment, &s->ccFeature, &s->devToolsMode);
    return 0;
}

int nvmlDeviceGetConfComputeGpuCertificate(void *handle, gpu_certificate *cert) {
    CHECK("nvmlDeviceGetConfComputeGpuCertificate");
    memset(cert, 0, sizeof *cert);
    const char *pattern = getenv("NVML_STANDIN_CHAIN");
    char path[4096];
    if (!pattern) return 999;
    if (strstr(pattern, "%u")) snprintf(path, sizeof path, pattern, (unsigned int)((size_t)handle - 0x1000));
    else snprintf(path, sizeof path, "%s", pattern);
    long n = read_path(path, cert->attestationCertChain, ATTESTATION_CERT_CHAIN_SIZE);
    if (n < 0) return 999;
    cert->attestationCertChainSize = (unsigned int)n;
    return 0;
}

int nvmlDeviceGetConfComputeGpuAttestationReport(void *handle, gpu_report *report) {
    CHECK("nvmlDeviceGetConfComputeGpuAttestationReport");
    char path[4096], name[64];
    snprintf(name, sizeof name, "nonce-%u.bin", (unsigned int)((size_t)handle - 0x1000));
    state_path(path, sizeof path, name);
    FILE *f = fopen(path, "wb");
    if (f) { fwrite(report->nonce, 1, NONCE_SIZE, f); fclose(f); }
    const char *signer = getenv("NVML_STANDIN_SIGNER");
    long n;
    if (signer) {
        char cmd[8192], hex[2 * NONCE_SIZE + 1];
        for (int i = 0; i < NONCE_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", report->nonce[i]);
        snprintf(cmd, sizeof cmd, "%s --index %u --nonce %s", signer, (unsigned int)((size_t)handle - 0x1000), hex);
        FILE *p = popen(cmd, "r");
        if (!p) return 999;
        n = (long)fread(report->attestationReport, 1, REPORT_SIZE, p);
        if (pclose(p) != 0 || n <= 0) return 999;
    } else {
        n = read_file("NVML_STANDIN_REPORT", report->attestationReport, REPORT_SIZE);
    }
    if (n < 0) return 999;
    report->attestationReportSize = (unsigned int)n;
    report->isCecAttestationReportPresent = 0;
    report->cecAttestationReportSize = 0;
    return 0;
}

int nvmlSystemSetConfComputeGpusReadyState(unsigned int accepting) {
    CHECK("nvmlSystemSetConfComputeGpusReadyState");
    char path[4096];
    state_path(path, sizeof path, "ready");
    FILE *f = fopen(path, "w");
    if (!f) return 999;
    const char *sticks = getenv("NVML_STANDIN_READY_STICKS");
    fprintf(f, "%u", (sticks && strcmp(sticks, "0") == 0) ? 0u : accepting);
    fclose(f);
    return 0;
}

int nvmlSystemGetConfComputeGpusReadyState(unsigned int *accepting) {
    CHECK("nvmlSystemGetConfComputeGpusReadyState");
    char path[4096];
    state_path(path, sizeof path, "ready");
    FILE *f = fopen(path, "r");
    *accepting = 0;
    if (f) { if (fscanf(f, "%u", accepting) != 1) *accepting = 0; fclose(f); }
    return 0;
}
