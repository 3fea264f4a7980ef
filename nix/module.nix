# NixOS module `services.ddms`: one `ddms.service` (Nix switches generations atomically, so the
# blue-green slots of ops/systemd/ddms@.service are not needed here), configuration rendered to
# /etc/ddms/ddms.toml, optional local PostgreSQL, Mosquitto and an nginx TLS virtual host.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ddms;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "ddms.toml" cfg.settings;

  inherit (lib)
    literalExpression mkDefault mkEnableOption mkIf mkMerge mkOption optional optionals types;

  # "0.0.0.0:8883" → 8883
  portOf = listen: lib.toInt (lib.last (lib.splitString ":" listen));
  mosquitto = cfg.mqtt.mosquitto;
  embeddedTlsListen = cfg.settings.mqtt.embedded.tls_listen or null;
  # LoadCredential= puts secrets here, readable only by the service.
  credentials = "/run/credentials/ddms.service";
in
{
  options.services.ddms = {
    enable = mkEnableOption "ddms, the device data monitoring system";

    package = mkOption {
      type = types.package;
      description = ''
        The ddms package. The flake's `nixosModules.default` sets it to the flake's
        `packages.<system>.ddms`; set it yourself when importing `nix/module.nix` directly.
      '';
    };

    settings = mkOption {
      description = ''
        ddms configuration, rendered to `/etc/ddms/ddms.toml` (see `ddms.example.toml` for
        every key). Do not put secrets here — they would land in the world-readable Nix store:
        use {option}`services.ddms.environmentFile` (`DDMS_*` variables) or `<key>_file` keys.
      '';
      default = { };
      example = literalExpression ''
        {
          log.level = "debug";
          provisioning.token_file = "/run/secrets/ddms-provisioning-token";
          mqtt.embedded.tls_listen = "0.0.0.0:8883";
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          data_dir = mkOption {
            type = types.str;
            default = "/var/lib/ddms";
            description = "Local state (the SQLite database when PostgreSQL is not used).";
          };
          http.listen = mkOption {
            type = types.str;
            default = "127.0.0.1:8080";
            description = "Address of the HTTP server; nginx proxies to it.";
          };
          mqtt.mode = mkOption {
            type = types.enum [ "embedded" "external" "off" ];
            default = "embedded";
            description = ''
              `embedded`: ddms' own broker; `external`: a broker at `mqtt.url` (set for you by
              {option}`services.ddms.mqtt.mosquitto.enable`); `off`: no MQTT.
            '';
          };
        };
      };
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/ddms.env";
      description = ''
        File of `DDMS_*` environment variables for secrets, e.g.
        `DDMS_PROVISIONING__TOKEN=…` or `DDMS_DATABASE__URL=postgres://…`. Read by systemd as
        root, so it may be 0600 root-owned.
      '';
    };

    database.createLocally = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run PostgreSQL on this host with a `ddms` database owned by the `ddms` user, reached
        over the unix socket with peer authentication (no password). When false, set
        `database.url` (a secret: through {option}`services.ddms.environmentFile` or
        `settings.database.url_file`), or leave it unset for SQLite in `data_dir`.
      '';
    };

    mqtt.mosquitto = {
      enable = mkEnableOption ''
        a local Mosquitto (`services.mosquitto`) as ddms' broker instead of the embedded one.
        ddms logs in as `ddms` with {option}`services.ddms.mqtt.mosquitto.passwordFile`; device
        accounts are yours to add to the listener (or through Mosquitto's dynamic-security
        plugin with `settings.mqtt.dynsec`)
      '';
      address = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "Address of the Mosquitto listener (devices connect to it).";
      };
      port = mkOption {
        type = types.port;
        default = 1883;
        description = "Port of the Mosquitto listener.";
      };
      passwordFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "File holding the password of ddms' own Mosquitto account.";
      };
    };

    nginx = {
      enable = mkEnableOption "an nginx virtual host terminating TLS in front of ddms";
      hostName = mkOption {
        type = types.str;
        example = "ddms.example.net";
        description = "Server name of the virtual host.";
      };
      enableACME = mkOption {
        type = types.bool;
        default = false;
        description = "Get the certificate from Let's Encrypt (`security.acme`).";
      };
      sslCertificate = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "TLS certificate (PEM) when ACME is not used.";
      };
      sslCertificateKey = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "TLS key (PEM) when ACME is not used. A path outside the Nix store.";
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open 80 and 443 when nginx is enabled, and the MQTT port devices use: the embedded
        broker's `mqtt.embedded.tls_listen`, or Mosquitto's port when it listens beyond loopback.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = !cfg.nginx.enable || cfg.nginx.enableACME
            || (cfg.nginx.sslCertificate != null && cfg.nginx.sslCertificateKey != null);
          message = "services.ddms.nginx: set enableACME, or both sslCertificate and sslCertificateKey.";
        }
        {
          assertion = !mosquitto.enable || mosquitto.passwordFile != null;
          message = "services.ddms.mqtt.mosquitto.passwordFile is required with mqtt.mosquitto.enable.";
        }
      ];

      users.users.ddms = {
        isSystemUser = true;
        group = "ddms";
        home = "/var/lib/ddms";
        description = "ddms service user";
      };
      users.groups.ddms = { };

      environment.etc."ddms/ddms.toml".source = configFile;
      # `ddms user add`, `ddms token create`, `ddms config check` for the admin.
      environment.systemPackages = [ cfg.package ];

      systemd.services.ddms = {
        description = "ddms device data monitoring";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ]
          ++ optionals cfg.database.createLocally [ "postgresql.service" "postgresql-setup.service" ]
          ++ optional mosquitto.enable "mosquitto.service";
        requires = optional cfg.database.createLocally "postgresql.service";
        restartTriggers = [ configFile ];
        environment = {
          DDMS_CONFIG = "/etc/ddms/ddms.toml";
          DDMS_PROFILE = "production";
        };
        serviceConfig = {
          Type = "exec";
          User = "ddms";
          Group = "ddms";
          ExecStart = "${lib.getExe cfg.package} serve";
          EnvironmentFile = optional (cfg.environmentFile != null) cfg.environmentFile;
          LoadCredential = optional mosquitto.enable "mqtt_password:${toString mosquitto.passwordFile}";
          # SIGTERM: stop accepting, end live streams with a retry hint, finish requests, flush.
          KillSignal = "SIGTERM";
          TimeoutStopSec = 40;
          Restart = "on-failure";
          RestartSec = 2;
          # Every HTTP connection and live stream holds a descriptor: room for http.max_connections.
          LimitNOFILE = 65536;

          StateDirectory = "ddms";
          StateDirectoryMode = "0750";
          WorkingDirectory = "/var/lib/ddms";
          RuntimeDirectory = "ddms";

          # The same hardening as ops/systemd/ddms@.service: network, state directory, nothing else.
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          ProcSubset = "pid";
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          RemoveIPC = true;
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
          UMask = "0077";
        };
      };

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall (
        optionals cfg.nginx.enable [ 80 443 ]
        ++ optional (cfg.settings.mqtt.mode == "embedded" && embeddedTlsListen != null)
          (portOf embeddedTlsListen)
        ++ optional (mosquitto.enable && mosquitto.address != "127.0.0.1") mosquitto.port
      );
    }

    (mkIf cfg.database.createLocally {
      services.postgresql = {
        enable = true;
        ensureDatabases = [ "ddms" ];
        ensureUsers = [{ name = "ddms"; ensureDBOwnership = true; }];
      };
      # Peer authentication over the socket: NixOS' default `local all all peer` rule.
      services.ddms.settings.database.url =
        mkDefault "postgres://ddms@localhost/ddms?host=/run/postgresql";
    })

    (mkIf mosquitto.enable {
      services.mosquitto = {
        enable = true;
        listeners = [{
          inherit (mosquitto) address port;
          users.ddms = {
            inherit (mosquitto) passwordFile;
            acl = [ "readwrite devices/#" ];
          };
        }];
      };
      services.ddms.settings.mqtt = {
        mode = mkDefault "external";
        url = mkDefault "mqtt://127.0.0.1:${toString mosquitto.port}";
        username = mkDefault "ddms";
        password_file = mkDefault "${credentials}/mqtt_password";
      };
    })

    (mkIf cfg.nginx.enable {
      # nginx terminates TLS here: ddms believes its X-Forwarded-For/-Proto (client addresses
      # in the audit log and throttles, Secure cookies, HSTS).
      services.ddms.settings.http.trusted_proxies = mkDefault [ "127.0.0.1" "::1" ];
      services.nginx = {
        enable = true;
        # Mozilla's intermediate profile (TLS 1.2 and 1.3), as ops/nginx/ddms.conf.
        recommendedTlsSettings = true;
        recommendedProxySettings = true;
        recommendedOptimisation = true;
        virtualHosts.${cfg.nginx.hostName} = {
          forceSSL = true;
          inherit (cfg.nginx) enableACME;
          extraConfig = ''
            add_header Strict-Transport-Security "max-age=63072000" always;
          '';
          locations."/".proxyPass = "http://${cfg.settings.http.listen}";
          # Server-Sent Events: no buffering, long reads.
          locations."/api/stream" = {
            proxyPass = "http://${cfg.settings.http.listen}";
            extraConfig = ''
              proxy_buffering off;
              proxy_cache off;
              proxy_read_timeout 1h;
            '';
          };
        } // lib.optionalAttrs (!cfg.nginx.enableACME) {
          inherit (cfg.nginx) sslCertificate sslCertificateKey;
        };
      };
    })
  ]);
}
