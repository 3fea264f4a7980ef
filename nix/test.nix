# `checks.<system>.nixos`: two VMs with `services.ddms`, their secrets in root-only files
# outside the Nix store as a deployment has them.
# - machine: local PostgreSQL, the embedded broker, nginx with a throwaway certificate whose key
#   nginx gets as a credential, the provisioning token as a ddms credential, an EnvironmentFile.
#   /ready answers 200 directly and through nginx over TLS; the token is accepted (and is not in
#   /etc/ddms); `ddms-admin` runs ddms as the service does (same credentials, same database).
# - sqlite: SQLite in a data_dir outside /var/lib (/srv/ddms) under ProtectSystem=strict, and a
#   local Mosquitto bound to the VM's LAN address only, which ddms must connect to: /ready (which
#   waits for the broker connection) answers 200.
{ self, pkgs }:

let
  cert = pkgs.runCommand "ddms-test-cert" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout $out/key.pem -out $out/cert.pem -days 3650 \
      -subj /CN=ddms.test -addext subjectAltName=DNS:ddms.test
  '';
  token = "nixos-test-token";
  mqttPassword = "nixos-test-mqtt-password";
  ownerPassword = "nixos-test-owner-password";

  # Writes the secrets root-only (0600 in a 0700 directory) before the services that load them
  # start. Their text is in the Nix store here, which only a test may allow itself.
  secretsService = services: script: {
    wantedBy = [ "multi-user.target" ];
    before = services;
    requiredBy = services;
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
    };
    script = ''
      umask 077
      mkdir -p /run/secrets
      ${script}
    '';
  };
in
{
  name = "ddms";

  nodes.machine = { ... }: {
    imports = [ self.nixosModules.default ];
    systemd.services.test-secrets = secretsService [ "ddms.service" "nginx.service" ] ''
      printf '%s\n' '${token}' > /run/secrets/ddms-provisioning-token
      printf '%s\n' 'DDMS_HTTP__PUBLIC_URL=https://ddms.test' > /run/secrets/ddms.env
      install -m 0600 ${cert}/key.pem /run/secrets/ddms-tls.key
    '';
    services.ddms = {
      enable = true;
      database.createLocally = true;
      environmentFile = "/run/secrets/ddms.env";
      secretFiles.provisioningToken = "/run/secrets/ddms-provisioning-token";
      nginx = {
        enable = true;
        hostName = "ddms.test";
        sslCertificate = "${cert}/cert.pem";
        sslCertificateKey = "/run/secrets/ddms-tls.key";
      };
      openFirewall = true;
    };
    environment.systemPackages = [ pkgs.curl ];
    virtualisation.memorySize = 2048;
  };

  nodes.sqlite = { config, ... }: {
    imports = [ self.nixosModules.default ];
    systemd.services.test-secrets = secretsService [ "ddms.service" "mosquitto.service" ] ''
      printf '%s\n' '${mqttPassword}' > /run/secrets/ddms-mqtt-password
    '';
    services.ddms = {
      enable = true;
      database.createLocally = false;
      settings.data_dir = "/srv/ddms";
      mqtt.mosquitto = {
        enable = true;
        address = config.networking.primaryIPAddress;
        passwordFile = "/run/secrets/ddms-mqtt-password";
      };
      openFirewall = true;
    };
    environment.systemPackages = [ pkgs.curl ];
  };

  testScript = { nodes, ... }:
    let
      lanAddress = nodes.sqlite.networking.primaryIPAddress;
      # One line: it goes into a Python string of the test script. Prints the HTTP status.
      register = tokenValue:
        "curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json'"
        + " -H 'X-Provisioning-Token: ${tokenValue}' -d '{\\\"name\\\":\\\"nixos-test-device\\\"}'"
        + " http://127.0.0.1:8080/api/devices/register";
    in
    ''
      start_all()

      with subtest("machine: PostgreSQL, nginx over TLS"):
          machine.wait_for_unit("postgresql.service")
          machine.wait_for_unit("ddms.service")
          machine.wait_until_succeeds("curl -sf http://127.0.0.1:8080/ready", timeout=120)
          ready = machine.succeed("curl -sf http://127.0.0.1:8080/ready")
          print(ready)
          machine.succeed("grep -q 'postgres://ddms@localhost/ddms' /etc/ddms/ddms.toml")
          # The key is root-only: nginx reads its own copy (LoadCredential=).
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

      with subtest("machine: the provisioning token reaches ddms as a credential only"):
          machine.fail("runuser -u ddms -- cat /run/secrets/ddms-provisioning-token")
          machine.succeed(
              "grep -F '/run/credentials/ddms.service/provisioning_token' /etc/ddms/ddms.toml"
          )
          machine.fail("grep -F '${token}' /etc/ddms/ddms.toml")
          machine.succeed("${register "wrong-token"} | grep -x 401")
          machine.succeed("${register token} | grep -x 201")

      with subtest("machine: ddms-admin runs ddms as the service does"):
          machine.succeed(
              "runuser -u nobody -- /run/current-system/sw/bin/ddms-admin config check 2>&1 | grep -F 'run it as root'"
          )
          shown = machine.succeed("ddms-admin config check")
          # The token file (its own credential copy) was read, the EnvironmentFile applied.
          assert 'token = "[redacted]"' in shown, shown
          assert "https://ddms.test" in shown, shown
          # The exit status is ddms' own.
          machine.fail("ddms-admin no-such-command")
          # Same user, same database (peer authentication as ddms): the service sees the user.
          machine.succeed("printf '%s\\n' '${ownerPassword}' | ddms-admin user add --username owner --role owner")
          machine.succeed(
              "curl -sf -X POST -H 'Content-Type: application/json' "
              + "-d '{\"username\":\"owner\",\"password\":\"${ownerPassword}\"}' "
              + "http://127.0.0.1:8080/api/auth/login"
          )

      with subtest("sqlite: data_dir outside /var/lib, Mosquitto on the LAN address"):
          sqlite.wait_for_unit("mosquitto.service")
          sqlite.wait_for_unit("ddms.service")
          sqlite.wait_until_succeeds("curl -sf http://127.0.0.1:8080/ready", timeout=120)
          sqlite.succeed("test \"$(stat -c %U /srv/ddms/ddms.db)\" = ddms")
          sqlite.succeed("grep -F 'mqtt://${lanAddress}:1883' /etc/ddms/ddms.toml")
          # Nothing answers on loopback, where ddms used to connect.
          sqlite.fail("timeout 5 bash -c '</dev/tcp/127.0.0.1/1883'")
          # openFirewall opened the port of a listener beyond loopback.
          machine.succeed("timeout 5 bash -c '</dev/tcp/${lanAddress}/1883'")
    '';
}
