# Pure helpers of module.nix and package.nix: builtins only, no nixpkgs, so the repository tests
# (xtask/src/tidy/nix.rs) evaluate this very file with `nix-instantiate --eval` on machines
# without nixpkgs, and the module and the package use the same code.
let
  inherit (builtins)
    any attrNames concatStringsSep filter foldl' isAttrs isPath isString match replaceStrings
    split storeDir stringLength substring;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  # "/a//b/" → [ "a" "b" ]
  components = path: filter (c: isString c && c != "") (split "/+" path);

  normalise = path: "/" + concatStringsSep "/" (components path);

  # `path` is `dir` or inside it (both normalised).
  isUnder = dir: path: path == dir || hasPrefix "${dir}/" path;

  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];

  # "mqtt.dynsec.password_file" → [ "mqtt" "dynsec" "password_file" ]
  splitKey = key: filter isString (split "\\." key);
in
rec {
  # Where LoadCredential= puts the copies of ddms.service's secrets: a private ramfs readable by
  # the service's user only, created at start and removed at stop.
  credentialDir = "/run/credentials/ddms.service";

  # Every file ddms reads a secret from: `services.ddms.secretFiles.<name>`. Each becomes
  # `LoadCredential=<credential>:<path>` and settings `<key>` = credentialDir/<credential>.
  # `literal` is the key that would hold the secret itself (settings must not set it).
  secretFiles = {
    databaseUrl = {
      key = "database.url_file";
      literal = "database.url";
      credential = "database_url";
      description = "the PostgreSQL URL with its password (`postgres://ddms:…@db.example.net/ddms`)";
    };
    provisioningToken = {
      key = "provisioning.token_file";
      literal = "provisioning.token";
      credential = "provisioning_token";
      description = "the token devices present to register themselves (`X-Provisioning-Token`)";
    };
    mqttPassword = {
      key = "mqtt.password_file";
      literal = "mqtt.password";
      credential = "mqtt_password";
      description = "the password of ddms' account on an external broker (set for you from `mqtt.mosquitto.passwordFile`)";
    };
    mqttDynsecPassword = {
      key = "mqtt.dynsec.password_file";
      literal = "mqtt.dynsec.password";
      credential = "mqtt_dynsec_password";
      description = "the password of the Mosquitto dynamic-security admin ddms manages device accounts with";
    };
    s3SecretAccessKey = {
      key = "backup.s3.secret_access_key_file";
      literal = "backup.s3.secret_access_key";
      credential = "s3_secret_access_key";
      description = "the S3 secret access key for uploading backups";
    };
    httpTlsKey = {
      key = "http.tls.key";
      credential = "http_tls_key";
      description = "the private key (PEM) of ddms' own HTTPS listener (`settings.http.tls.cert` is its certificate)";
    };
    mqttEmbeddedTlsKey = {
      key = "mqtt.embedded.tls.key";
      credential = "mqtt_embedded_tls_key";
      description = "the private key (PEM) of the embedded broker's TLS listener (`settings.mqtt.embedded.tls.cert` is its certificate)";
    };
    mqttTlsKey = {
      key = "mqtt.tls.key";
      credential = "mqtt_tls_key";
      description = "the client key (PEM) for mutual TLS with an external broker (`settings.mqtt.tls.cert` is its certificate)";
    };
  };

  isStorePath = path: isString path && isUnder storeDir (normalise path);

  # Why `path` cannot name a secret (or a directory) outside the Nix store, or null when it can.
  # A Nix path value (`./token`) would be copied into the store by evaluation; whitespace and
  # `%` would be split or expanded by systemd (LoadCredential=, EnvironmentFile=, tmpfiles).
  pathProblem = path:
    if isPath path then
      "is a Nix path value, which evaluation copies into the world-readable Nix store: write it as a string (\"/run/secrets/…\")"
    else if !isString path then
      "is not a string"
    else if !hasPrefix "/" path then
      "is not an absolute path"
    else if match ".*[[:space:]%].*" path != null then
      "contains whitespace or `%`, which systemd would split or expand"
    else if any (c: c == "." || c == "..") (components path) then
      "has `.` or `..` components"
    else if isStorePath path then
      "is in the Nix store, which is read-only and readable by every local user"
    else
      null;

  # Why ddms.service could not write to `dir` (data_dir, backup.dir), or null.
  writableDirProblem = dir:
    let
      problem = pathProblem dir;
      n = normalise dir;
    in
    if problem != null then
      problem
    else if any (d: isUnder d n) [ "/home" "/root" "/run/user" ] then
      "is under /home, /root or /run/user, which ProtectHome= hides from the service"
    else if any (d: isUnder d n) [ "/tmp" "/var/tmp" ] then
      "is under /tmp or /var/tmp, which PrivateTmp= replaces with an empty private directory"
    else
      null;

  # "/var/lib/ddms" → "ddms" (StateDirectory= is relative to /var/lib); null elsewhere, where
  # the module adds ReadWritePaths= and a tmpfiles rule instead.
  stateDirectoryOf = dir:
    let n = normalise dir;
    in if hasPrefix "/var/lib/" n then substring 9 (stringLength n) n else null;

  # The host ddms connects to for a Mosquitto listener bound to `address`: the address itself,
  # or loopback when it binds every address (null, "", 0.0.0.0, ::).
  mqttHost = address:
    if address == null || address == "" || address == "0.0.0.0" then "127.0.0.1"
    else if address == "::" || address == "[::]" then "::1"
    else address;

  # IPv6 literals go in brackets in a URL.
  mqttUrl = address: port:
    let
      host = mqttHost address;
      bracketed = if match ".*:.*" host != null && !hasPrefix "[" host then "[${host}]" else host;
    in
    "mqtt://${bracketed}:${toString port}";

  # Whether a listener on `address` is reachable from this host only (no firewall port needed).
  isLoopback = address:
    address != null
    && (address == "localhost" || hasPrefix "127." address || address == "::1" || address == "[::1]");

  # The environment variable ddms reads a settings key from: "mqtt.dynsec.password_file" →
  # "DDMS_MQTT__DYNSEC__PASSWORD_FILE" (figment's `DDMS_` prefix, `__` nesting).
  envName = key: "DDMS_" + replaceStrings ([ "." ] ++ lower) ([ "__" ] ++ upper) key;

  # settings.<key> ("a.b.c"), or null when unset.
  getSetting = key: settings:
    foldl' (acc: name: if isAttrs acc && acc ? ${name} then acc.${name} else null) settings
      (splitKey key);

  # A PostgreSQL URL carrying a password (`user:password@` or `password=`); the password-less
  # socket URL of `database.createLocally` is not one.
  urlHasPassword = url:
    isString url
    && (match "[^:/]+://[^/?#@]*:[^/?#@]*@.*" url != null || match ".*[?&]password=.*" url != null);

  # Secrets written into `settings`, which becomes /etc/ddms/ddms.toml in the world-readable
  # Nix store: one message each (the module turns them into assertions).
  settingsProblems = settings:
    let
      literal = name:
        let
          spec = secretFiles.${name};
          value = getSetting spec.literal settings;
          isSecret = if spec.literal == "database.url" then urlHasPassword value else value != null;
        in
        if spec ? literal && isSecret then
          [ "services.ddms.settings.${spec.literal} holds a secret, which would land in the world-readable Nix store: use services.ddms.secretFiles.${name} (or environmentFile)" ]
        else
          [ ];
      file = name:
        let
          spec = secretFiles.${name};
          value = getSetting spec.key settings;
        in
        if isPath value || isStorePath value then
          [ "services.ddms.settings.${spec.key} is in the world-readable Nix store: use services.ddms.secretFiles.${name} with a path outside it" ]
        else
          [ ];
    in
    builtins.concatMap (name: literal name ++ file name) (attrNames secretFiles);

  # What package.nix builds from, relative to the repository root: the Cargo workspace and the
  # files the build and the library's unit tests read, nothing else, so that editing docs, the
  # deployment tooling or the integration tests does not change the derivation. Cargo loads
  # every workspace member's manifest, so xtask contributes its Cargo.toml, and src/main.rs
  # because cargo refuses a package without any target ("no targets specified in the
  # manifest"); xtask itself is not built. xtask/src/tidy/nix.rs checks that cargo loads this
  # tree and that every file the ddms sources embed or read at test time is in it.
  sourceFiles = [
    "Cargo.toml"
    "Cargo.lock"
    "app/Cargo.toml"
    "app/build.rs"
    "app/src"
    "app/assets"
    "migrations/postgres"
    "migrations/sqlite"
    "xtask/Cargo.toml"
    "xtask/src/main.rs"
    # Read by unit tests: config/ and alerts/config.rs check the example documents every key;
    # release/nginx.rs checks the shipped upstream include.
    "ddms.example.toml"
    "ops/nginx/ddms-upstream.conf"
  ];
}
