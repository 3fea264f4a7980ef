{
  description = "ddms — device data monitoring system";

  # The workspace needs Rust >= 1.94 (its MSRV): nixos-26.05 is the first stable channel
  # released after Rust 1.94 (nix/README.md). nix/package.nix refuses an older rustc.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      systemOf = pkgs: pkgs.stdenv.hostPlatform.system;
    in
    {
      packages = forAllSystems (pkgs: rec {
        # Built from the files nix/lib.nix lists, not from `self`, and without the commit hash
        # (nix/package.nix says why): a docs-only change or commit leaves the derivation alone.
        ddms = pkgs.callPackage ./nix/package.nix { };
        default = ddms;
      });

      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        services.ddms.package = lib.mkDefault self.packages.${systemOf pkgs}.ddms;
      };
      nixosModules.ddms = self.nixosModules.default;

      checks = forAllSystems (pkgs: {
        build = self.packages.${systemOf pkgs}.ddms;
        nixos = pkgs.testers.runNixOSTest (import ./nix/test.nix { inherit self pkgs; });
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${systemOf pkgs}.ddms ];
          packages = with pkgs; [
            rustfmt
            clippy
            postgresql_15
            mosquitto
            nginx
            openssl
            nix
          ];
        };
      });
    };
}
