// pgjdbc against Sluice, used the way a Java service uses it: PreparedStatements executed past
// the driver's prepareThreshold (so it switches to named server-side statements and binary
// results), a JDBC batch, setAutoCommit(false) transactions, SQLSTATEs from SQLException, and
// a topic consumed with a group cursor whose FETCH is woken by another connection's insert.
// Run as a single-file program: java -cp postgresql.jar PgJdbc.java PORT. Prints "ok".

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class PgJdbc {
    static String url;
    static Properties props = new Properties();

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static Connection connect() throws SQLException {
        return DriverManager.getConnection(url, props);
    }

    interface Sql {
        void run() throws SQLException;
    }

    static void expectState(String state, Sql sql) {
        try {
            sql.run();
        } catch (SQLException e) {
            check(state.equals(e.getSQLState()),
                "expected SQLSTATE " + state + ", got " + e.getSQLState() + ": " + e.getMessage());
            return;
        }
        throw new AssertionError("expected SQLSTATE " + state + ", the statement succeeded");
    }

    static long count(Connection conn, String table) throws SQLException {
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT count(*) FROM " + table)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static void sessionBasics() throws SQLException {
        try (Connection conn = connect(); Statement st = conn.createStatement()) {
            st.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, "
                + "balance numeric(12,2), active boolean, opened timestamptz, visits int)");

            // A JDBC batch: pgjdbc pipelines the Bind/Execute pairs under one Sync.
            try (PreparedStatement insert =
                     conn.prepareStatement("INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?)")) {
                for (int i = 1; i <= 20; i++) {
                    insert.setLong(1, i);
                    insert.setString(2, "owner" + i);
                    insert.setBigDecimal(3, new BigDecimal(i + ".50"));
                    insert.setBoolean(4, i % 2 == 0);
                    insert.setTimestamp(5, Timestamp.from(Instant.parse("2026-01-01T00:00:00Z")
                        .plusSeconds(i * 3600L)));
                    insert.setInt(6, i * 3);
                    insert.addBatch();
                }
                int[] counts = insert.executeBatch();
                check(counts.length == 20, "batch counts: " + counts.length);
                for (int c : counts) {
                    check(c == 1, "batch row count " + c);
                }
            }

            // Ten executions: past prepareThreshold (5) pgjdbc uses a named statement and
            // asks for binary results of the types it knows.
            try (PreparedStatement select = conn.prepareStatement(
                     "SELECT id, owner, balance, active, opened, visits FROM accounts WHERE id = ?")) {
                for (int i = 1; i <= 10; i++) {
                    select.setLong(1, i);
                    try (ResultSet rs = select.executeQuery()) {
                        check(rs.next(), "row " + i);
                        check(rs.getLong("id") == i, "id " + rs.getLong("id"));
                        check(rs.getString("owner").equals("owner" + i), "owner " + rs.getString(2));
                        check(rs.getBigDecimal("balance").compareTo(new BigDecimal(i + ".50")) == 0,
                            "balance " + rs.getBigDecimal("balance"));
                        check(rs.getBoolean("active") == (i % 2 == 0), "active");
                        check(rs.getTimestamp("opened").toInstant().equals(
                            Instant.parse("2026-01-01T00:00:00Z").plusSeconds(i * 3600L)),
                            "opened " + rs.getTimestamp("opened").toInstant());
                        check(rs.getInt("visits") == i * 3, "visits " + rs.getInt("visits"));
                        check(!rs.next(), "one row for id " + i);
                    }
                }
                ResultSetMetaData meta = select.getMetaData();
                check(meta.getColumnCount() == 6, "column count " + meta.getColumnCount());
                check(meta.getColumnName(3).equals("balance"), "column 3 " + meta.getColumnName(3));
            }

            try (PreparedStatement sum = conn.prepareStatement(
                     "SELECT active, count(*), sum(visits) FROM accounts WHERE id <= ? "
                         + "GROUP BY active ORDER BY active")) {
                sum.setInt(1, 10);
                try (ResultSet rs = sum.executeQuery()) {
                    check(rs.next() && !rs.getBoolean(1) && rs.getLong(2) == 5 && rs.getLong(3) == 75,
                        "odd accounts");
                    check(rs.next() && rs.getBoolean(1) && rs.getLong(2) == 5 && rs.getLong(3) == 90,
                        "even accounts");
                }
            }

            expectState("42601", () -> st.execute("SELEC 1"));
            expectState("42P01", () -> st.executeQuery("SELECT * FROM missing"));
            expectState("23505", () -> st.execute("INSERT INTO accounts (id, owner) VALUES (1, 'x')"));
            expectState("23502", () -> st.execute("INSERT INTO accounts (id) VALUES (99)"));
            check(count(conn, "accounts") == 20, "accounts after errors");
        }
    }

    static void transactions() throws SQLException {
        try (Connection conn = connect(); Connection observer = connect()) {
            conn.setAutoCommit(false);
            try (PreparedStatement update =
                     conn.prepareStatement("UPDATE accounts SET visits = visits + ? WHERE id = ?")) {
                update.setInt(1, 100);
                update.setLong(2, 1);
                check(update.executeUpdate() == 1, "update count");
            }
            try (Statement st = conn.createStatement()) {
                st.execute("DELETE FROM accounts WHERE id = 2");
            }
            check(count(observer, "accounts") == 20, "uncommitted delete visible to another session");
            conn.rollback();
            check(count(conn, "accounts") == 20, "rollback kept the delete");

            try (Statement st = conn.createStatement()) {
                st.execute("DELETE FROM accounts WHERE id = 2");
                expectState("23505", () -> st.execute("INSERT INTO accounts (id, owner) VALUES (1, 'x')"));
                expectState("25P02", () -> st.executeQuery("SELECT 1"));
            }
            conn.rollback();

            try (Statement st = conn.createStatement()) {
                st.execute("DELETE FROM accounts WHERE id = 2");
            }
            conn.commit();
            check(count(observer, "accounts") == 19, "commit lost the delete");

            // Two writers of one row: the second commit fails with 40001 and can be retried.
            try (Connection other = connect()) {
                other.setAutoCommit(false);
                try (Statement mine = conn.createStatement(); Statement theirs = other.createStatement()) {
                    mine.execute("UPDATE accounts SET visits = visits + 1 WHERE id = 3");
                    theirs.execute("UPDATE accounts SET visits = visits + 2 WHERE id = 3");
                    conn.commit();
                    expectState("40001", other::commit);
                    theirs.execute("UPDATE accounts SET visits = visits + 2 WHERE id = 3");
                    other.commit();
                }
            }
            try (Statement st = observer.createStatement();
                 ResultSet rs = st.executeQuery("SELECT visits FROM accounts WHERE id = 3")) {
                check(rs.next() && rs.getInt(1) == 12, "visits after retry");
            }
        }
    }

    static void topicConsumer() throws Exception {
        try (Connection admin = connect(); Statement st = admin.createStatement()) {
            st.execute("CREATE TOPIC clicks (id bigint NOT NULL, page text) WITH (partitions = 2)");
            st.execute("CREATE TABLE seen (id bigint PRIMARY KEY)");
            try (PreparedStatement append = admin.prepareStatement(
                     "INSERT INTO clicks VALUES (?, ?) RETURNING _partition, _offset")) {
                for (int i = 1; i <= 3; i++) {
                    append.setLong(1, i);
                    append.setString(2, "/" + i);
                    try (ResultSet rs = append.executeQuery()) {
                        check(rs.next(), "RETURNING row");
                        check(rs.getLong("_offset") >= 0, "offset");
                    }
                }
            }
        }

        try (Connection consumer = connect()) {
            consumer.setAutoCommit(false);
            List<Long> ids = new ArrayList<>();
            try (Statement st = consumer.createStatement()) {
                st.execute("DECLARE c CURSOR FOR SUBSCRIBE clicks GROUP 'web'");
                try (ResultSet rs = st.executeQuery("FETCH 10 FROM c")) {
                    ResultSetMetaData meta = rs.getMetaData();
                    check(meta.getColumnName(1).equals("_partition")
                        && meta.getColumnName(2).equals("_offset")
                        && meta.getColumnName(3).equals("_timestamp"), "cursor columns");
                    while (rs.next()) {
                        ids.add(rs.getLong("id"));
                    }
                }
            }
            check(ids.size() == 3, "fetched " + ids);
            try (PreparedStatement seen = consumer.prepareStatement("INSERT INTO seen VALUES (?)")) {
                for (long id : ids) {
                    seen.setLong(1, id);
                    seen.executeUpdate();
                }
            }
            try (Statement st = consumer.createStatement()) {
                st.execute("COMMIT OFFSETS FOR c");
            }
            consumer.commit();

            // A FETCH that waits is woken by another connection's insert.
            Thread producer = new Thread(() -> {
                try {
                    Thread.sleep(300);
                    try (Connection p = connect(); Statement st = p.createStatement()) {
                        st.execute("INSERT INTO clicks VALUES (4, '/4')");
                    }
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            producer.start();
            long started = System.nanoTime();
            List<Long> late = new ArrayList<>();
            try (Statement st = consumer.createStatement();
                 ResultSet rs = st.executeQuery("FETCH 10 FROM c WITH (timeout = '20s')")) {
                while (rs.next()) {
                    late.add(rs.getLong("id"));
                }
            }
            producer.join();
            check(late.equals(List.of(4L)), "late records " + late);
            check(System.nanoTime() - started < 10_000_000_000L, "FETCH was not woken by the insert");
            consumer.rollback();
        }

        try (Connection check = connect(); Statement st = check.createStatement()) {
            try (ResultSet rs = st.executeQuery(
                     "SELECT sum(next_offset) FROM sluice_catalog.consumer_offsets WHERE group_name = 'web'")) {
                check(rs.next() && rs.getLong(1) == 3, "committed offsets");
            }
            check(count(check, "seen") == 3, "seen rows");
            try (ResultSet rs = st.executeQuery(
                     "SELECT sum(lag) FROM sluice_catalog.consumer_lag WHERE group_name = 'web'")) {
                check(rs.next() && rs.getLong(1) == 1, "lag");
            }
        }
    }

    public static void main(String[] args) throws Exception {
        url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/sluice";
        props.setProperty("user", "sluice");
        props.setProperty("connectTimeout", "10");
        props.setProperty("socketTimeout", "60");
        sessionBasics();
        transactions();
        topicConsumer();
        System.out.println("ok");
    }
}
