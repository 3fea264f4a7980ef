{
  description = "ddms — device data monitoring system";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        ddms = pkgs.callPackage ./nix/package.nix {
          src = self;
          gitSha = self.shortRev or self.dirtyShortRev or "unknown";
        };
        default = ddms;
      });

      checks = forAllSystems (pkgs: {
        build = self.packages.${pkgs.system}.ddms;
      });
    };
}
