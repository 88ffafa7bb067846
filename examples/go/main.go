// Command submit-and-list submits one alert to Kubernaut's gateway, then reads the incident it
// opened from storage, with the Go client module github.com/kubernaut/kubernaut/gen/go:
//
//	go run . -gateway localhost:9080 -storage localhost:9085 \
//	    -certs ~/.local/state/kubernaut/certs -name operator
//
// Each flag falls back to an environment variable (KUBERNAUT_GATEWAY_ADDRESS,
// KUBERNAUT_STORAGE_ADDRESS, KUBERNAUT_CERTS_DIR), then to the dev stack's default. It prints
// what the gateway did with the alert, then the incident's id, and exits non-zero on failure.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	commonv1 "github.com/kubernaut/kubernaut/gen/go/kubernaut/common/v1"
	gatewayv1 "github.com/kubernaut/kubernaut/gen/go/kubernaut/gateway/v1"
	storagev1 "github.com/kubernaut/kubernaut/gen/go/kubernaut/storage/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func main() {
	home, _ := os.UserHomeDir()
	gateway := flag.String("gateway", env("KUBERNAUT_GATEWAY_ADDRESS", "localhost:9080"), "the gateway's host:port")
	storage := flag.String("storage", env("KUBERNAUT_STORAGE_ADDRESS", "localhost:9085"), "storage's host:port")
	certs := flag.String("certs", env("KUBERNAUT_CERTS_DIR", filepath.Join(home, ".local/state/kubernaut/certs")),
		"the directory of ca.crt, NAME.crt and NAME.key")
	name := flag.String("name", "operator", "your certificate: NAME.crt and NAME.key")
	wait := flag.Duration("wait", 60*time.Second, "how long to wait for the incident")
	flag.Parse()
	if err := run(*gateway, *storage, *certs, *name, *wait); err != nil {
		fmt.Fprintln(os.Stderr, "submit-and-list:", err)
		os.Exit(1)
	}
}

func run(gatewayAddress, storageAddress, certs, name string, wait time.Duration) error {
	// Mutual TLS: the dev CA vouches for the services (their certificates name "localhost" and
	// their in-cluster DNS names, checked against the address dialled), and your certificate
	// tells them who calls.
	creds, err := mtls(filepath.Join(certs, "ca.crt"),
		filepath.Join(certs, name+".crt"), filepath.Join(certs, name+".key"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait+10*time.Second)
	defer cancel()

	// What AlertManager would send (a namespace of its own, to tell its incident apart).
	now := timestamppb.Now()
	namespace := "example-" + strings.ToLower(rand.Text()[:8])
	alert := &commonv1.Alert{
		Name:   "KubeDeploymentRolloutStuck",
		Status: commonv1.AlertStatus_ALERT_STATUS_FIRING,
		Labels: map[string]string{
			"alertname":  "KubeDeploymentRolloutStuck",
			"namespace":  namespace,
			"deployment": "checkout",
			"severity":   "warning",
		},
		StartsAt: now,
		Source:   commonv1.AlertSource_ALERT_SOURCE_ALERTMANAGER,
	}
	gatewayConn, err := grpc.NewClient(gatewayAddress, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer gatewayConn.Close()
	reply, err := gatewayv1.NewGatewayServiceClient(gatewayConn).SubmitAlerts(ctx,
		&gatewayv1.SubmitAlertsRequest{Alerts: []*commonv1.Alert{alert}})
	if err != nil {
		return fmt.Errorf("gateway %s: SubmitAlerts: %w", gatewayAddress, err)
	}
	outcome := reply.GetOutcomes()[0]
	fmt.Println("gateway:", outcome.GetDisposition(), outcome.GetReason())
	if outcome.GetDisposition() != commonv1.AlertDisposition_ALERT_DISPOSITION_ACCEPTED {
		return fmt.Errorf("the gateway did not accept the alert: %s %s", outcome.GetDisposition(), outcome.GetReason())
	}

	// The gateway answers once the alert is safely queued; the incident opens soon after.
	storageConn, err := grpc.NewClient(storageAddress, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer storageConn.Close()
	store := storagev1.NewStorageServiceClient(storageConn)
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		listed, err := store.ListIncidents(ctx,
			&storagev1.ListIncidentsRequest{AlertName: alert.GetName(), OpenedAfter: now})
		if err != nil {
			return fmt.Errorf("storage %s: ListIncidents: %w", storageAddress, err)
		}
		for _, incident := range listed.GetIncidents() {
			if incident.GetSubject().GetNamespace() == namespace {
				fmt.Println(incident.GetIncidentId())
				return nil
			}
		}
	}
	return fmt.Errorf("no incident for the alert (namespace %s) after %s", namespace, wait)
}

// mtls is the client side of mutual TLS from PEM files.
func mtls(caFile, certFile, keyFile string) (credentials.TransportCredentials, error) {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(&tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}), nil
}

func env(key, fallback string) string {
	if value := os.Getenv(key); value != "" {
		return value
	}
	return fallback
}
