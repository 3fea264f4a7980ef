# `checks.<system>.nixos`: a VM with `services.ddms` on local PostgreSQL, the embedded broker
# and nginx with a throwaway certificate; passes when the unit runs and /ready answers 200,
# directly and through nginx over TLS.
{ self, pkgs }:

let
  cert = pkgs.runCommand "ddms-test-cert" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout $out/key.pem -out $out/cert.pem -days 3650 \
      -subj /CN=ddms.test -addext subjectAltName=DNS:ddms.test
  '';
in
{
  name = "ddms";

  nodes.machine = { ... }: {
    imports = [ self.nixosModules.default ];
    services.ddms = {
      enable = true;
      database.createLocally = true;
      # A test value in the store is fine; real deployments point at a secret outside it.
      environmentFile = pkgs.writeText "ddms-test.env" "DDMS_PROVISIONING__TOKEN=nixos-test-token\n";
      nginx = {
        enable = true;
        hostName = "ddms.test";
        sslCertificate = "${cert}/cert.pem";
        sslCertificateKey = "${cert}/key.pem";
      };
      openFirewall = true;
    };
    environment.systemPackages = [ pkgs.curl ];
    virtualisation.memorySize = 2048;
  };

  testScript = ''
    machine.wait_for_unit("postgresql.service")
    machine.wait_for_unit("ddms.service")
    machine.wait_until_succeeds("curl -sf http://127.0.0.1:8080/ready", timeout=120)
    ready = machine.succeed("curl -sf http://127.0.0.1:8080/ready")
    print(ready)
    machine.succeed("grep -q 'postgres://ddms@localhost/ddms' /etc/ddms/ddms.toml")
    machine.succeed(
        "curl -sf --resolve ddms.test:443:127.0.0.1 --cacert ${cert}/cert.pem https://ddms.test/ready"
    )
    # HTTP redirects to HTTPS.
    machine.succeed(
        "curl -s -o /dev/null -w '%{http_code}' --resolve ddms.test:80:127.0.0.1 http://ddms.test/ready | grep -x 301"
    )
    machine.succeed("systemctl show -p User --value ddms.service | grep -x ddms")
    machine.succeed("systemctl show -p ProtectSystem --value ddms.service | grep -x strict")
    machine.succeed("ps -o user= -C ddms | grep -x ddms")
  '';
}
