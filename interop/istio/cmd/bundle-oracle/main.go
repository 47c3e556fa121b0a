// Command bundle-oracle loads plugged-in CA bundle folders the way istiod does at start, with
// Istio's own code, and prints one JSON line per folder:
//
//	{"dir":"...","ok":true}
//	{"dir":"...","ok":false,"stage":"load","error":"..."}
//
// The steps are istiod's (pilot/pkg/bootstrap: createIstioCA, then initDNSCertsIstiod):
//
//   - layout: tls.crt present means the kubernetes.io/tls layout (tls.crt, tls.key, ca.crt, the
//     chain being tls.crt then ca.crt), otherwise ca-cert.pem, ca-key.pem, cert-chain.pem,
//     root-cert.pem, plus ca-crl.pem when it exists (PILOT_ENABLE_CA_CRL is on by default);
//   - complete: istiod refuses a folder with some of those files but not all (a folder with none
//     makes istiod fall back to a self-signed CA, which is no load of the bundle: refused here);
//   - load: ca.NewPluggedCertIstioCAOptions (util.NewVerifiedKeyCertBundleFromFile, then the
//     signing certificate must be a CA), then ca.NewIstioCA (the chain must not have expired);
//   - sign: istiod's own serving certificate, issued by the loaded CA with ca.GenKeyCert.
//
// It exits 0 whenever it ran, whatever the verdicts; 2 on bad usage.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"istio.io/istio/security/pkg/cmd"
	"istio.io/istio/security/pkg/pki/ca"
)

// istiod's defaults: DEFAULT_WORKLOAD_CERT_TTL, MAX_WORKLOAD_CERT_TTL,
// CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE, and the names and lifetime of its own certificate.
const caRSAKeySize = 2048

var istiodDNSNames = []string{"istiod.istio-system.svc"}

type verdict struct {
	Dir   string `json:"dir"`
	OK    bool   `json:"ok"`
	Stage string `json:"stage,omitempty"`
	Error string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bundle-oracle DIR...")
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, dir := range os.Args[1:] {
		v := verdict{Dir: dir, OK: true}
		if stage, err := load(dir); err != nil {
			v = verdict{Dir: dir, Stage: stage, Error: err.Error()}
		}
		if err := out.Encode(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

// load runs istiod's steps on dir and names the stage that failed.
func load(dir string) (string, error) {
	bundle, err := detect(dir)
	if err != nil {
		return "layout", err
	}
	if err := complete(bundle); err != nil {
		return "complete", err
	}
	opts, err := ca.NewPluggedCertIstioCAOptions(bundle, cmd.DefaultWorkloadCertTTL,
		cmd.DefaultMaxWorkloadCertTTL, caRSAKeySize)
	if err != nil {
		return "load", err
	}
	istioCA, err := ca.NewIstioCA(opts)
	if err != nil {
		return "load", err
	}
	if _, _, err := istioCA.GenKeyCert(istiodDNSNames, cmd.DefaultSelfSignedCACertTTL, false); err != nil {
		return "sign", err
	}
	return "", nil
}

// detect is istiod's detectSigningCABundleAndCRL for the folder dir.
func detect(dir string) (ca.SigningCAFileBundle, error) {
	tlsCert := filepath.Join(dir, ca.TLSSecretCACertFile)
	if _, err := os.Stat(tlsCert); err == nil {
		root := filepath.Join(dir, ca.TLSSecretRootCertFile)
		return ca.SigningCAFileBundle{
			RootCertFile:    root,
			CertChainFiles:  []string{tlsCert, root},
			SigningCertFile: tlsCert,
			SigningKeyFile:  filepath.Join(dir, ca.TLSSecretCAPrivateKeyFile),
		}, nil
	} else if !os.IsNotExist(err) {
		return ca.SigningCAFileBundle{}, err
	}
	bundle := ca.SigningCAFileBundle{
		RootCertFile:    filepath.Join(dir, ca.RootCertFile),
		CertChainFiles:  []string{filepath.Join(dir, ca.CertChainFile)},
		SigningCertFile: filepath.Join(dir, ca.CACertFile),
		SigningKeyFile:  filepath.Join(dir, ca.CAPrivateKeyFile),
	}
	if crl := filepath.Join(dir, ca.CACRLFile); exists(crl) {
		bundle.CRLFile = crl
	}
	return bundle, nil
}

// complete is istiod's checkCABundleCompleteness.
func complete(b ca.SigningCAFileBundle) error {
	chain := false
	for _, f := range b.CertChainFiles {
		chain = chain || exists(f)
	}
	have := []bool{exists(b.SigningKeyFile), exists(b.SigningCertFile), exists(b.RootCertFile), chain}
	all, some := true, false
	for _, h := range have {
		all, some = all && h, some || h
	}
	switch {
	case all:
		return nil
	case some:
		return errors.New("failed to create an istiod CA: incomplete signing CA bundle detected")
	default:
		return errors.New("no signing CA bundle: istiod would make a self-signed CA instead")
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
