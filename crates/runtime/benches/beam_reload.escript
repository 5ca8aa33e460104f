#!/usr/bin/env escript
%%! -noshell
%% The BEAM's side of the code-server bench (`code_server.rs`, issue 12): the
%% same protocol as zest's cold reload, on the same machine in the same run.
%%
%% For each size, builds of a module of N small functions (plus get/0, which
%% returns a marker, and echo/2) are compiled to .beam binaries beforehand, each
%% differing from the others in every function's body. One sample is: write the
%% .beam file, code:soft_purge + code:load_file, and call get/0 until it answers
%% the new marker. Prints `beam <N>` and every sample in ms on one line.
%% Builds are kept in DIR, so a second run of the same size does not compile
%% them again.
%%
%% Usage: beam_reload.escript DIR N ROUNDS (DIR: a scratch directory)
-mode(compile).

main([Dir, Functions, Rounds]) ->
    true = code:add_patha(Dir),
    measure(Dir, list_to_integer(Functions), list_to_integer(Rounds));
main(_) ->
    io:format(standard_error, "usage: beam_reload.escript DIR N ROUNDS~n", []),
    halt(2).

measure(Dir, Functions, Rounds) ->
    Module = list_to_atom("zest_bench_m" ++ integer_to_list(Functions)),
    Builds = [build(Dir, Module, Functions, Marker) || Marker <- lists:seq(1, Rounds + 1)],
    Path = filename:join(Dir, atom_to_list(Module) ++ ".beam"),
    [{_, First} | Rest] = Builds,
    _ = reload(Module, Path, First),
    Samples = [timed(Module, Path, Marker, Bin) || {Marker, Bin} <- Rest],
    io:format("beam ~b~s~n", [Functions, [io_lib:format(" ~.4f", [S]) || S <- Samples]]).

timed(Module, Path, Marker, Bin) ->
    Expected = marker(Marker),
    Started = erlang:monotonic_time(nanosecond),
    Expected = reload(Module, Path, Bin),
    (erlang:monotonic_time(nanosecond) - Started) / 1.0e6.

reload(Module, Path, Bin) ->
    ok = file:write_file(Path, Bin),
    _ = code:soft_purge(Module),
    {module, Module} = code:load_file(Module),
    Module:get().

marker(Marker) ->
    list_to_binary(io_lib:format("1~19..0b", [Marker])).

%% A build's .beam binary, compiled from generated source (not timed), or
%% kept from an earlier run.
build(Dir, Module, Functions, Marker) ->
    Kept = filename:join(Dir, atom_to_list(Module) ++ "-" ++ integer_to_list(Marker) ++ ".bin"),
    case file:read_file(Kept) of
        {ok, Bin} ->
            {Marker, Bin};
        {error, enoent} ->
            {Marker, Bin} = compile_build(Dir, Module, Functions, Marker),
            ok = file:write_file(Kept, Bin),
            {Marker, Bin}
    end.

compile_build(Dir, Module, Functions, Marker) ->
    Name = atom_to_list(Module),
    Exports = ["get/0", "echo/2" | ["f" ++ integer_to_list(K) ++ "/2" || K <- lists:seq(0, Functions - 1)]],
    Source = [
        "-module(", Name, ").\n",
        "-export([", lists:join(",", Exports), "]).\n",
        "get() -> <<\"", marker(Marker), "\">>.\n",
        "echo(P, L) -> (P bsl 32) bor L.\n"
        | [io_lib:format("f~b(P, _L) -> P + ~b.~n", [K, Marker * 1000000 + K])
           || K <- lists:seq(0, Functions - 1)]
    ],
    Src = filename:join(Dir, "src_" ++ Name ++ ".erl"),
    ok = file:write_file(Src, Source),
    {ok, Module, Bin} = compile:file(Src, [binary, report_errors]),
    ok = file:delete(Src),
    {Marker, Bin}.
