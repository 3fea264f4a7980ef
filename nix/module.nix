# NixOS module `services.ddms`: one `ddms.service` (Nix switches generations atomically, so the
# blue-green slots of ops/systemd/ddms@.service are not needed here), configuration rendered to
# /etc/ddms/ddms.toml, optional local PostgreSQL, Mosquitto and an nginx TLS virtual host.
#
# Secrets never enter the Nix store: every secret option is a path string outside it (checked
# by assertions), read by systemd as root when the unit starts — EnvironmentFile=, or
# LoadCredential=, which hands the service a private copy in /run/credentials/ddms.service that
# the ddms user alone can read, so the source may stay 0400 root.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ddms;
  # The pure part (path checks, the table of secret files, the MQTT address): ./lib.nix, which
  # the repository tests evaluate without nixpkgs.
  ddmsLib = import ./lib.nix;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "ddms.toml" cfg.settings;

  inherit (lib)
    concatMap literalExpression mkDefault mkEnableOption mkIf mkMerge mkOption optional
    optionals types;

  # "0.0.0.0:8883" → 8883
  portOf = listen: lib.toInt (lib.last (lib.splitString ":" listen));
  mosquitto = cfg.mqtt.mosquitto;
  embeddedTlsListen = cfg.settings.mqtt.embedded.tls_listen or null;

  # The secret files that are set: option name → source path.
  secrets = lib.filterAttrs (_: path: path != null)
    (lib.genAttrs (lib.attrNames ddmsLib.secretFiles) (name: cfg.secretFiles.${name}));
  credentialOf = name: ddmsLib.secretFiles.${name}.credential;
  loadCredentials = lib.mapAttrsToList (name: path: "${credentialOf name}:${path}") secrets;

  # Directories ddms writes. ProtectSystem=strict leaves only StateDirectory= (under /var/lib)
  # and ReadWritePaths= writable; the latter must exist when the unit starts, so a tmpfiles
  # rule creates them (at boot and on every switch).
  dataDir = cfg.settings.data_dir;
  backupDir = cfg.settings.backup.dir or null;
  writable = { data_dir = dataDir; } // lib.optionalAttrs (backupDir != null) { "backup.dir" = backupDir; };
  writableDirs = lib.attrValues writable;
  stateDirs = lib.filter (d: d != null) (map ddmsLib.stateDirectoryOf writableDirs);
  otherDirs = lib.filter (d: ddmsLib.stateDirectoryOf d == null) writableDirs;

  # ddms.service's own environment; ddms-admin sets the same, so both read one configuration.
  serviceEnvironment = {
    DDMS_CONFIG = "/etc/ddms/ddms.toml";
    DDMS_PROFILE = "production";
  };

  # Runs inside ddms-admin's transient unit. Its credentials are copied to its own
  # $CREDENTIALS_DIRECTORY, not to /run/credentials/ddms.service (which exists only while the
  # service runs, and only for it), so the settings that name credentials are pointed there —
  # unless EnvironmentFile= set them already, as that would win in ddms.service too.
  adminExec = pkgs.writeShellScript "ddms-admin-exec" ''
    ${lib.concatStrings (lib.mapAttrsToList (name: _:
      let var = ddmsLib.envName ddmsLib.secretFiles.${name}.key;
      in ''
        export ${var}="''${${var}-$CREDENTIALS_DIRECTORY/${credentialOf name}}"
      '') secrets)}
    exec ${lib.getExe cfg.package} "$@"
  '';

  # `ddms-admin ARGS…` = `ddms ARGS…` as ddms.service would run it: the ddms user, its
  # environment, EnvironmentFile= and credentials, read by systemd as root (a transient unit).
  admin = pkgs.writeShellApplication {
    name = "ddms-admin";
    runtimeInputs = [ config.systemd.package pkgs.coreutils ];
    text = ''
      if [ "$(id -u)" -ne 0 ]; then
        echo "ddms-admin: run it as root (sudo ddms-admin …): it starts ddms as the ddms user through systemd" >&2
        exit 1
      fi
      # --pty on a terminal (interactive use), --pipe otherwise (scripts, pipes); the exit
      # status is ddms'. The arguments are passed verbatim (no $VAR expansion by systemd) and
      # kept out of the unit's description, which the journal records.
      exec systemd-run --quiet --collect --wait --pty --pipe --expand-environment=no \
        --service-type=exec --description=ddms-admin \
        --uid=ddms --gid=ddms -p UMask=0077 \
        ${lib.concatMapStringsSep " " (d: lib.escapeShellArg "--property=StateDirectory=${d}") stateDirs} \
        --property=StateDirectoryMode=0750 --working-directory=${lib.escapeShellArg dataDir} \
        ${lib.concatStringsSep " " (lib.mapAttrsToList (n: v: lib.escapeShellArg "--setenv=${n}=${v}") serviceEnvironment)} \
        ${lib.optionalString (cfg.environmentFile != null) (lib.escapeShellArg "--property=EnvironmentFile=${cfg.environmentFile}")} \
        ${lib.concatMapStringsSep " " (c: lib.escapeShellArg "--property=LoadCredential=${c}") loadCredentials} \
        -- ${adminExec} "$@"
    '';
  };

  # nginx (running as its own user) gets the TLS key the same way, in its own credentials.
  nginxKeyCredential = "ddms-tls-key";

  # An assertion per set path option: absolute, outside the Nix store, no systemd specials.
  pathAssertion = option: value:
    optional (value != null) (
      let problem = ddmsLib.pathProblem value;
      in {
        assertion = problem == null;
        message = "services.ddms.${option} = \"${toString value}\" ${toString problem}.";
      });
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
        every key). Do not put secrets here — they would land in the world-readable Nix store
        (assertions refuse the secret keys and `<key>_file` paths into the store): use
        {option}`services.ddms.secretFiles` or {option}`services.ddms.environmentFile`.
      '';
      default = { };
      example = literalExpression ''
        {
          log.level = "debug";
          mqtt.embedded.tls_listen = "0.0.0.0:8883";
          mqtt.embedded.tls.cert = "/var/lib/ddms-tls/broker.crt";
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          data_dir = mkOption {
            type = types.str;
            default = "/var/lib/ddms";
            description = ''
              Local state (the SQLite database when PostgreSQL is not used; backups unless
              `backup.dir` is set). Under /var/lib it is the unit's `StateDirectory=`;
              elsewhere (a data volume: `/srv/ddms`) it is created by systemd-tmpfiles, owned by
              `ddms`, and made writable with `ReadWritePaths=`. Not under /home, /root or /tmp,
              which the unit's sandbox hides. `backup.dir`, when set, is treated the same way.
            '';
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
      # A string, not a path: a path literal would be copied into the world-readable store.
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/ddms.env";
      description = ''
        Absolute path, outside the Nix store, of a file of `DDMS_*` environment variables, e.g.
        `DDMS_BACKUP__S3__ACCESS_KEY_ID=…` or `AWS_SECRET_ACCESS_KEY=…`. Read by systemd as root
        when the unit starts (`EnvironmentFile=`), so it may be `0400 root`. For the secrets
        ddms reads from files, prefer {option}`services.ddms.secretFiles`: environment
        variables are inherited by child processes and visible to the service user in
        `/proc/<pid>/environ`.
      '';
    };

    secretFiles = lib.mapAttrs (name: spec: mkOption {
      # A string, not a path: a path literal would be copied into the world-readable store.
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/ddms-${lib.replaceStrings [ "_" ] [ "-" ] spec.credential}";
      description = ''
        Absolute path, outside the Nix store, of the file holding ${spec.description}. systemd
        copies it at each start of the unit into the service's private credentials directory
        (`LoadCredential=${spec.credential}:<path>`), so it may be `0400 root`; ddms' setting
        `${spec.key}` is set to `${ddmsLib.credentialDir}/${spec.credential}`. After changing
        the file, restart `ddms.service`.
      '';
    }) ddmsLib.secretFiles;

    database.createLocally = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run PostgreSQL on this host with a `ddms` database owned by the `ddms` user, reached
        over the unix socket with peer authentication (no password). When false, set
        {option}`services.ddms.secretFiles.databaseUrl` (a URL with a password is a secret),
        or leave it unset for SQLite in `data_dir`.
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
        type = types.nullOr types.str;
        default = "127.0.0.1";
        example = "192.168.10.5";
        description = ''
          Address the Mosquitto listener binds (devices connect to it); null binds every
          address. ddms connects to this address too (to 127.0.0.1 when null or `0.0.0.0`, to
          ::1 when `::`).
        '';
      };
      port = mkOption {
        type = types.port;
        default = 1883;
        description = "Port of the Mosquitto listener.";
      };
      passwordFile = mkOption {
        # A string, not a path: a path literal would be copied into the world-readable store.
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/ddms-mqtt-password";
        description = ''
          Absolute path, outside the Nix store, of the file holding the password of ddms' own
          Mosquitto account. Both services get it with `LoadCredential=` (so it may be
          `0400 root`): Mosquitto's module for its password file, and ddms as
          {option}`services.ddms.secretFiles.mqttPassword`.
        '';
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
        # A string, not a path: a path literal would be copied into the world-readable store.
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/ddms-tls.key";
        description = ''
          Absolute path, outside the Nix store, of the TLS key (PEM) when ACME is not used.
          nginx gets it with `LoadCredential=` (so it may be `0400 root`) and reads it from
          `/run/credentials/nginx.service/${nginxKeyCredential}`. After replacing the file,
          restart `nginx.service` (a reload keeps the old copy).
        '';
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
        {
          # ddms refuses database.url together with database.url_file.
          assertion = !(cfg.database.createLocally && cfg.secretFiles.databaseUrl != null);
          message = "services.ddms.secretFiles.databaseUrl is for a remote database: database.createLocally connects over the socket without a password.";
        }
      ]
      ++ pathAssertion "environmentFile" cfg.environmentFile
      ++ pathAssertion "mqtt.mosquitto.passwordFile" mosquitto.passwordFile
      ++ pathAssertion "nginx.sslCertificateKey" cfg.nginx.sslCertificateKey
      ++ concatMap (name: pathAssertion "secretFiles.${name}" cfg.secretFiles.${name})
        (lib.attrNames ddmsLib.secretFiles)
      ++ lib.mapAttrsToList (key: dir:
        let problem = ddmsLib.writableDirProblem dir;
        in {
          assertion = problem == null;
          message = "services.ddms.settings.${key} = \"${toString dir}\" ${toString problem}.";
        }) writable
      ++ map (message: { assertion = false; inherit message; }) (ddmsLib.settingsProblems cfg.settings);

      users.users.ddms = {
        isSystemUser = true;
        group = "ddms";
        home = "/var/lib/ddms";
        description = "ddms service user";
      };
      users.groups.ddms = { };

      environment.etc."ddms/ddms.toml".source = configFile;
      # `sudo ddms-admin user add …`, `token create`, `config check`, `backup create`, `migrate`:
      # ddms as the service runs it. Plain `ddms` is not installed: run by a user it would read
      # no configuration (or the wrong one) and create its files as that user.
      environment.systemPackages = [ admin ];

      # Every secret file becomes a credential, and the setting ddms reads it from names the
      # service's private copy.
      services.ddms.settings = mkMerge (lib.mapAttrsToList (name: _:
        lib.setAttrByPath (lib.splitString "." ddmsLib.secretFiles.${name}.key)
          "${ddmsLib.credentialDir}/${credentialOf name}") secrets);

      systemd.tmpfiles.rules = map (dir: "d ${dir} 0750 ddms ddms - -") otherDirs;

      systemd.services.ddms = {
        description = "ddms device data monitoring";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ]
          ++ optionals cfg.database.createLocally [ "postgresql.service" "postgresql-setup.service" ]
          ++ optional mosquitto.enable "mosquitto.service";
        requires = optional cfg.database.createLocally "postgresql.service";
        restartTriggers = [ configFile ];
        environment = serviceEnvironment;
        # A data_dir on its own volume (/srv): start only once it is mounted.
        unitConfig.RequiresMountsFor = otherDirs;
        serviceConfig = {
          Type = "exec";
          User = "ddms";
          Group = "ddms";
          ExecStart = "${lib.getExe cfg.package} serve";
          EnvironmentFile = optional (cfg.environmentFile != null) cfg.environmentFile;
          LoadCredential = loadCredentials;
          # SIGTERM: stop accepting, end live streams with a retry hint, finish requests, flush.
          KillSignal = "SIGTERM";
          TimeoutStopSec = 40;
          Restart = "on-failure";
          RestartSec = 2;
          # Every HTTP connection and live stream holds a descriptor: room for http.max_connections.
          LimitNOFILE = 65536;

          StateDirectory = stateDirs;
          StateDirectoryMode = "0750";
          ReadWritePaths = otherDirs;
          WorkingDirectory = dataDir;
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
        ++ optional (mosquitto.enable && !ddmsLib.isLoopback mosquitto.address) mosquitto.port
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
      # The one password file serves both: Mosquitto's module loads it as its own credential.
      services.ddms.secretFiles.mqttPassword = mkIf (mosquitto.passwordFile != null) mosquitto.passwordFile;
      services.ddms.settings.mqtt = {
        mode = mkDefault "external";
        # Where the listener binds, not a fixed 127.0.0.1: a listener on a LAN address does
        # not answer on loopback.
        url = mkDefault (ddmsLib.mqttUrl mosquitto.address mosquitto.port);
        username = mkDefault "ddms";
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
          inherit (cfg.nginx) sslCertificate;
          sslCertificateKey = "/run/credentials/nginx.service/${nginxKeyCredential}";
        };
      };
      # ExecStartPre's `nginx -t` and ExecReload run in the unit too, so they see the copy.
      systemd.services.nginx.serviceConfig.LoadCredential =
        mkIf (!cfg.nginx.enableACME && cfg.nginx.sslCertificateKey != null)
          [ "${nginxKeyCredential}:${cfg.nginx.sslCertificateKey}" ];
    })
  ]);
}
